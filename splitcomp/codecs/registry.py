"""Codec registry: names and stable numeric ids (the id is written into every bitstream)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Codec

_BY_NAME: dict[str, type[Codec]] = {}
_BY_ID: dict[int, type[Codec]] = {}


def register_codec(name: str, codec_id: int):
    """Class decorator: register a codec under ``name`` with a wire id that never changes."""

    def wrap(cls: type[Codec]) -> type[Codec]:
        if not 0 < codec_id < 256:
            raise ValueError("codec_id must fit in one byte and be non-zero")
        if name in _BY_NAME and _BY_NAME[name] is not cls:
            raise ValueError(f"codec name {name!r} already registered")
        if codec_id in _BY_ID and _BY_ID[codec_id] is not cls:
            raise ValueError(f"codec id {codec_id} already used by {_BY_ID[codec_id].name!r}")
        cls.name = name
        cls.codec_id = codec_id
        _BY_NAME[name] = cls
        _BY_ID[codec_id] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of every registered codec, sorted."""
    return sorted(_BY_NAME)


def codec_class(name: str) -> type[Codec]:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; available: {', '.join(available())}") from None


def codec_class_by_id(codec_id: int) -> type[Codec] | None:
    return _BY_ID.get(codec_id)


def get(name: str, **params: Any) -> Codec:
    """Build the codec registered as ``name`` with the given parameters."""
    return codec_class(name)(**params)
