"""List the registered codecs and their parameters."""

from __future__ import annotations

import argparse

from ..codecs import available, codec_class


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="show parameters")


def run(args: argparse.Namespace) -> int:
    for name in available():
        cls = codec_class(name)
        tag = "lossless" if cls.lossless else "lossy"
        print(f"{name:12s} id={cls.codec_id:<3d} {tag}")
        if args.verbose:
            for p in cls.params_spec:
                print(f"    {p.name}={p.default!r} ({p.kind.__name__}) {p.doc}")
    return 0
