"""Session contexts: every registered codec with ``has_session_context`` passes the hook tests
by being registered (given an example in :data:`EXAMPLES`), and the process registries
(:class:`~splitcomp.codecs.contexts.ContextRegistry`) are bounded LRUs a scope wins over."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, compact, context_scope
from splitcomp.codecs import _bottleneck_tables as bt
from splitcomp.codecs import _tokenwise_context as twc
from splitcomp.codecs import bottleneck as bn
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs.base import SessionContextCodec
from splitcomp.codecs.contexts import SCOPE_ONLY, ContextRegistry, scoped_context

from .registries import emptied, unregistered


def _tokenwise(channels: int, seed: int) -> tuple[codecs.Codec, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ctx = tw.calibrate(rng.laplace(size=(300, channels)).astype(np.float32))
    x = rng.laplace(size=(1, 5, channels)).astype(np.float32)
    x[0, 0, 0] = 1e4  # an escape
    return tw.TokenwiseCodec.with_context(ctx, level=-4), torch.from_numpy(x)


def _bottleneck(channels: int, seed: int) -> tuple[codecs.Codec, torch.Tensor]:
    rng = np.random.default_rng(seed)
    k = np.arange(-10, 11)
    rows = [np.floor(4000 * np.exp(-np.abs(k) / s)).astype(np.int64) + 1
            for s in np.linspace(0.5, 3.0, channels)]
    tables = bn.BottleneckTables.from_model_tables(
        rng.normal(size=channels).astype(np.float32), np.full(channels, -10), rows)
    x = (rng.normal(size=(1, channels, 4, 4)) * 3).astype(np.float32)
    x[0, 0, 0, 0] = 500.0  # an escape
    return bn.BottleneckCodec.with_tables(tables), torch.from_numpy(x)


#: per context codec: ``(channels, seed) -> (a codec with a registered context, an input)``
EXAMPLES: dict[str, Callable[[int, int], tuple[codecs.Codec, torch.Tensor]]] = {
    "tokenwise": _tokenwise,
    "bottleneck": _bottleneck,
}
CONTEXT_CODECS = [n for n in codecs.available() if codecs.codec_class(n).has_session_context]
#: the name each context codec's contexts are saved under (tools name files so)
FILE_NAMES = {"tokenwise": "tokenwise-{:05x}.sctx", "bottleneck": "bottleneck-{:05x}.sbnt"}


def example(name: str, channels: int = 8, seed: int = 0) -> tuple[SessionContextCodec,
                                                                   torch.Tensor]:
    """A codec ``name`` with a registered context of ``channels``, and an input for it."""
    if name not in EXAMPLES:
        pytest.fail(f"context codec {name!r}: add an example to EXAMPLES")
    codec, x = EXAMPLES[name](channels, seed)
    assert isinstance(codec, SessionContextCodec), "context codecs build on SessionContextCodec"
    return codec, x


def test_every_builtin_context_codec_is_covered() -> None:
    assert {"tokenwise", "bottleneck"} <= set(CONTEXT_CODECS)


def test_base_codec_has_no_session_context() -> None:
    rans = codecs.codec_class("rans")
    assert not rans.has_session_context
    assert rans().session_context() is None
    assert rans.local_context(bytes(32)) is None
    with pytest.raises(BitstreamError, match="no session context"):
        rans.load_context(b"SCTX")
    with pytest.raises(BitstreamError, match="no session context"):
        rans.context_key(object())


@pytest.mark.parametrize("name", CONTEXT_CODECS)
def test_session_context_hook_round_trip(name: str) -> None:
    """What a runtime does: send session_context(), load_context() it at the peer, decode
    that session's streams with contexts={key: ctx}, no registration involved; the scope wins
    over the registry."""
    codec, x = example(name)
    cls = type(codec)
    stream = codec.encode(x)
    registered = codecs.decode(stream)[0]
    sent = codec.session_context()
    assert sent is not None
    loaded = cls.load_context(sent)
    key = cls.context_key(loaded)
    assert key == codec.params[cls.context_param] == cls.context_registry.id_of(sent)
    digest = hashlib.sha256(sent).digest()
    assert cls.local_context(digest) is not None
    assert cls.local_context(digest) is cls.context_registry.get(key)
    assert cls.local_context(hashlib.sha256(b"other").digest()) is None
    with pytest.raises(BitstreamError):
        cls.load_context(sent[:-1])
    with pytest.raises(TypeError):
        cls.context_key(object())
    wrong = cls.load_context(example(name, 4, 1)[0].session_context())  # 4 channels, not 8
    with pytest.raises(BitstreamError, match="channels"):  # the scope wins over the registry
        codecs.decode(stream, contexts={key: wrong})
    assert scoped_context(key) is None  # the scope ends with the call
    with unregistered(cls.context_registry, key):
        assert cls.local_context(digest) is None
        with pytest.raises(BitstreamError, match="not registered"):
            codecs.decode(stream)
        with pytest.raises(ValueError, match="not registered"):
            codecs.get(name, **codec.params)
        for out in (codecs.decode(stream, contexts={key: loaded}),
                    codec.decode(stream, contexts={key: loaded})):
            assert torch.equal(out[0], registered)
        assert codecs.peek(stream, contexts={key: loaded}).params == codec.params
        with context_scope({key: loaded}):  # encoding in scope: the same stream
            assert cls(**codec.params).encode(x) == stream
        assert key not in cls.context_registry  # decoding in scope registers nothing
    assert codecs.get(name).session_context() is None  # the default: no context


@pytest.mark.parametrize("name", CONTEXT_CODECS)
def test_context_files(name: str, tmp_path) -> None:
    codec, _ = example(name, seed=2)
    reg = type(codec).context_registry
    data = codec.session_context()
    key = reg.id_of(data)
    path = reg.save(codec.context, tmp_path)
    assert path.name == FILE_NAMES[name].format(key) and path.read_bytes() == data
    with unregistered(reg, key):
        with pytest.raises(BitstreamError, match="not registered"):
            reg.require(key)
        assert reg.load_file(path) == key and reg.to_bytes(reg.require(key)) == data
    bad = tmp_path / "bad"
    bad.write_bytes(data[:-1])
    with pytest.raises(BitstreamError):
        reg.load_file(bad)
    with pytest.raises(OSError):
        reg.load_file(tmp_path / "missing")


@pytest.mark.parametrize(("module", "registry", "names"), [
    (twc, twc.CONTEXTS, {"context_id": "id_of", "context_filename": "filename",
                         "save_context": "save", "register_context": "register",
                         "load_context_file": "load_file", "registered_context": "get",
                         "find_context": "find", "get_context": "require"}),
    (bt, bt.TABLES, {"tables_id": "id_of", "tables_filename": "filename", "save_tables": "save",
                     "register_tables": "register", "load_tables_file": "load_file",
                     "registered_tables": "get", "local_tables": "by_digest",
                     "find_tables": "find", "get_tables": "require"}),
    (compact, compact.TEMPLATES, {"template_id": "id_of", "register_template": "register",
                                  "find_template": "require"}),
])
def test_module_functions_are_the_registries(module, registry: ContextRegistry,
                                             names: dict[str, str]) -> None:
    for old, method in names.items():
        assert getattr(module, old) == getattr(registry, method), old


# -- the registry ------------------------------------------------------------------------
def _registry(**options) -> ContextRegistry[bytes]:
    options = {"parse": bytes, "to_bytes": bytes, "file_ext": "bin"} | options
    return ContextRegistry("test item", bytes, **options)


def test_ids_are_sha256_prefixes() -> None:
    data = b"some item"
    d = hashlib.sha256(data).digest()
    assert _registry(id_bits=20).id_of(data) == int.from_bytes(d[:3], "little") & 0xFFFFF
    assert _registry(id_bits=24).id_of(data) == int.from_bytes(d[:3], "little")
    assert _registry(id_bits=1).id_of(data) == 1  # never 0
    assert _registry().filename(0xABC) == "test-00abc.bin"
    assert _registry(id_bits=24).filename(0xABC) == "test-000abc.bin"


def test_registry_is_a_bounded_lru() -> None:
    reg = _registry(max_items=2)
    a, b, c = (reg.register(x) for x in (b"a", b"b", b"c"))
    assert reg.keys() == [b, c] and len(reg) == 2 and a not in reg
    assert reg.get(b) == b"b"  # refreshed: c is now the least recently used
    assert reg.register(bytearray(b"d")) not in (a, b, c)
    assert reg.keys()[0] == b and c not in reg
    assert reg.register(b"b") == b and reg.keys()[-1] == b  # the same bytes again: fine
    reg.max_items = 1
    reg.register(b"a")
    assert reg.keys() == [a]
    assert reg.remove(a) == b"a" and reg.remove(a) is None and len(reg) == 0
    reg.register(b"x")
    reg.clear()
    assert len(reg) == 0


def test_collisions_and_digests() -> None:
    reg = _registry(id_bits=1)  # every item has id 1
    assert reg.register(b"a") == 1
    with pytest.raises(ValueError, match="test item 1: another"):
        reg.register(b"b")
    assert reg.by_digest(hashlib.sha256(b"a").digest()) == b"a"
    assert reg.by_digest(hashlib.sha256(b"b").digest()) is None  # another item under its id


def test_scope_wins_over_the_registry() -> None:
    reg, unscoped = _registry(), _registry(scoped=False, key_format="06x", hint=" (hint)")
    key = reg.register(b"registered")
    unscoped.register(b"registered")
    with context_scope({key: b"scoped"}):
        assert reg.find(key) == reg.require(key) == b"scoped"
        assert reg.get(key) == b"registered"  # the registry alone
        assert unscoped.find(key) == b"registered"
    with context_scope({key: object()}):  # not an item of this registry: ignored
        assert reg.find(key) == b"registered"
    reg.remove(key)
    assert reg.find(key) is None
    with pytest.raises(BitstreamError, match=f"test item {key}: not registered here$"):
        reg.require(key)
    with pytest.raises(BitstreamError, match=r"test item 0001c8: not registered here \(hint"):
        unscoped.require(0x1C8)


def test_a_tagged_scope_can_hide_the_registry() -> None:
    """Templates sit in a scope under (tag, id) beside contexts under plain ids; a scope that
    holds SCOPE_ONLY of a kind is all of that kind a stream may name."""
    reg = _registry(scope_tag="tpl")
    key = reg.register(b"registered")
    assert reg.scope_key(key) == ("tpl", key)
    with context_scope({key: b"a plain id: another kind's"}):
        assert reg.find(key) == b"registered"
    with context_scope({("tpl", key): b"scoped"}):
        assert reg.find(key) == b"scoped"
    with context_scope({reg.scope_key(SCOPE_ONLY): True}):
        assert reg.find(key) is None
        with pytest.raises(BitstreamError, match="not registered"):
            reg.require(key)
    with context_scope({SCOPE_ONLY: True}):  # untagged: not this kind's marker
        assert reg.find(key) == b"registered"


@dataclass(frozen=True)
class Item:
    """An item that parses: its bytes start with ``OK``."""

    data: bytes

    def to_bytes(self) -> bytes:
        return self.data

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Item:
        if not bytes(data).startswith(b"OK"):
            raise BitstreamError("bad item")
        return cls(bytes(data))


def test_files(tmp_path) -> None:
    reg = ContextRegistry("test item", Item, file_ext="bin", max_file_bytes=8)
    path = reg.save(Item(b"OK item"), tmp_path / "sub")
    key = reg.id_of(b"OK item")
    assert path.name == reg.filename(key) == f"test-{key:05x}.bin"
    assert path.read_bytes() == b"OK item"
    assert reg.load_file(path) == key and reg.get(key) == Item(b"OK item")
    assert reg.register(b"OK item") == key and reg.key_of(Item(b"OK item")) == key
    (tmp_path / "big").write_bytes(b"OK 123456")
    with pytest.raises(BitstreamError, match="too large"):
        reg.load_file(tmp_path / "big")
    (tmp_path / "bad").write_bytes(b"no")
    with pytest.raises(BitstreamError, match="bad item"):
        reg.load_file(tmp_path / "bad")
    with pytest.raises(OSError):
        reg.load_file(tmp_path / "missing")
    assert len(reg) == 1


def test_helpers_restore_the_registries() -> None:
    reg = _registry()
    keys = [reg.register(x) for x in (b"a", b"b", b"c")]
    with emptied(reg):
        reg.max_items = 1
        reg.register(b"z")
    assert reg.keys() == keys and reg.max_items == 64
    with unregistered(reg, keys[0], 12345):
        assert keys[0] not in reg
    assert keys[0] in reg and 12345 not in reg
