"""The split-LLM fixtures (tiny models, prompt) for the network tests of LLM sessions."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from tests.llm.conftest import TINY, _one_thread, prompt, tiny_models  # noqa: E402,F401
