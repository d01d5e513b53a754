"""Entropy coding shared by the codecs, by job.

* :mod:`.coder` - the native coders (constriction's rANS stack, pcodec) behind one seam: the
  only module that imports them;
* :mod:`.tables` - frequency tables sent in payloads, histograms, and the one-call
  :func:`encode_symbols` / :func:`decode_symbols` (table + rANS words);
* :mod:`.bits` - vectorised varint and fixed-width bit packing, run-length masks.

Every public name is importable from here (``from splitcomp.codecs.entropy import X``).
"""

from __future__ import annotations

from .bits import mask_from_runs, pack_bits, put_varints, read_varints, runs, unpack_bits
from .coder import AnsReader, AnsWriter, Model, categorical, pco_decode, pco_encode
from .tables import (
    MAX_ALPHABET,
    MAX_SYMBOL,
    FreqTable,
    decode_symbol_indices,
    decode_symbols,
    encode_symbols,
    estimate_table_bits,
    histogram,
    ranks,
)

__all__ = [
    "MAX_ALPHABET",
    "MAX_SYMBOL",
    "AnsReader",
    "AnsWriter",
    "FreqTable",
    "Model",
    "categorical",
    "decode_symbol_indices",
    "decode_symbols",
    "encode_symbols",
    "estimate_table_bits",
    "histogram",
    "mask_from_runs",
    "pack_bits",
    "pco_decode",
    "pco_encode",
    "put_varints",
    "ranks",
    "read_varints",
    "runs",
    "unpack_bits",
]
