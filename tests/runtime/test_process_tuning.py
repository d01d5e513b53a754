"""``tune_process`` (what ``Server.serve_forever`` applies to a serving process): the objects
alive leave the cyclic collector's reach and its young generation is collected less often;
nothing else changes (a frozen object stays usable and ``gc.unfreeze`` takes it back)."""

from __future__ import annotations

import gc

from splitcomp.runtime.server import YOUNG_GC_THRESHOLD, tune_process


def test_tune_process_freezes_what_is_alive() -> None:
    alive = {"a": [1, 2, 3]}
    before = gc.get_threshold()
    try:
        tune_process()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *before[1:])
        assert alive["a"] == [1, 2, 3]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0
