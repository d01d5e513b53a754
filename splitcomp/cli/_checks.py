"""Checks the commands run before anything heavy: model and cut names, weights files, data
folders, codecs and their parameters, servers, ports and tokens files. Each raises
:class:`~._common.UsageError` with one line naming the problem and what to do."""

from __future__ import annotations

import difflib
import errno
import os
import pickle
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import nn

from .. import codecs
from ..codecs import Codec
from ..data import ImageFolderDataset, load_dataset
from ..partition import Partitioner, SplitError
from ..runtime.auth import Tokens
from ..runtime.client import http_url
from ..zoo import ModelConfig, list_models, load_model, model_config
from ._common import UsageError, one_line, split_param, warn


def _suggest(name: str, names: Sequence[str]) -> str:
    """``did you mean X? `` (the closest names, those sharing the longest start first)."""
    close = difflib.get_close_matches(name, list(names), n=2)
    close.sort(key=lambda c: -len(os.path.commonprefix([c, name])))
    return f"did you mean {' or '.join(close)}? " if close else ""


# -- models and cuts -------------------------------------------------------------------------
def zoo_config(name: str, flag: str = "--model", task: str | None = "image-classification"
               ) -> ModelConfig:
    """The zoo config of ``name``; :class:`UsageError` for an unknown name (with the closest
    ones) or a model of another ``task``."""
    try:
        cfg = model_config(name)
    except KeyError:
        names = [n for n in list_models() if task is None or model_config(n).task == task]
        raise UsageError(f"{flag} {name}: no such model; {_suggest(name, names)}"
                         f"available: {', '.join(names)} (splitcomp models)") from None
    if task is not None and cfg.task != task:
        raise UsageError(f"{flag} {name} is a {cfg.task} model, not an "
                         f"{task} one (splitcomp models)")
    return cfg


def lm_name(name: str, flag: str = "--model") -> None:
    """A causal LM: a Hugging Face folder (with ``config.json``) or a registered name."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return
    if path.is_dir():
        raise UsageError(f"{flag} {name}: a folder without config.json (not a Hugging Face "
                         "model folder)")
    zoo_config(name, flag, task="causal-lm")


def _user_file(weights: str | Path | None) -> bool:
    return weights not in (None, "default", "random", "hub") and not str(weights).startswith(
        ("http://", "https://"))


def load_checked_model(name: str, weights: str | Path | None, flag: str = "--weights"
                       ) -> nn.Module:
    """``load_model(name, weights)`` with a missing, unreadable or mismatched weights file, or
    absent default weights, as a :class:`UsageError`."""
    cfg = zoo_config(name, task=None)
    if _user_file(weights) and not Path(weights).expanduser().is_file():
        raise UsageError(f"{flag} {weights}: no such file (or 'random', 'hub', or leave it out "
                         "for the default weights)")
    try:
        return load_model(name, weights)
    except FileNotFoundError as e:
        if weights is None or weights == "default":
            raise UsageError(f"the default weights of {name} are not here "
                             f"({cfg.weights_source or 'no offline source'}): pass {flag} FILE, "
                             f"or {flag} random") from None
        raise UsageError(f"{flag} {weights}: {e}") from None
    except OSError as e:  # e.g. 'hub' without a network
        raise UsageError(f"{flag} {weights}: {one_line(str(e))}") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, TypeError, KeyError,
            ValueError) as e:
        if not _user_file(weights):
            raise
        text = one_line(str(e))
        if "do not fit" in text:
            raise UsageError(f"{flag} {weights}: not weights of {name} ({text[:200]})") from None
        if "Unsupported global" in text:
            why = "it holds Python objects besides tensors, not loaded: they could run code"
        elif isinstance(e, pickle.UnpicklingError | EOFError) or "zip archive" in text:
            why = "this is not a file torch.save wrote, or it is damaged"
        else:
            why = text[:200]
        raise UsageError(f"{flag} {weights}: not a weights file of {name} (expected a state dict "
                         f"saved with torch.save; {why})") from None


def check_weights(name: str, weights: str | Path | None, flag: str = "--weights") -> None:
    """A weights file of the user's loads into ``name`` (nothing to check for the default,
    random or hub weights: loading them reports its own problems)."""
    if _user_file(weights):
        load_checked_model(name, weights, flag)


def example_input(cfg: ModelConfig) -> torch.Tensor:
    """A zero image batch of one in the model's input size."""
    if cfg.input_size is None:
        raise UsageError(f"{cfg.name} does not take images")
    return torch.zeros(1, *cfg.input_size)


def check_splits(name: str, splits: Sequence[str], model: nn.Module | None = None,
                 flag: str = "--split") -> None:
    """Every cut of ``splits`` is one of the model's (a random-weight copy traced when
    ``model`` is not given); :class:`UsageError` naming the close ones otherwise."""
    if not splits:
        return
    cfg = zoo_config(name)
    if model is None:
        model = load_model(name, "random")
    parts = Partitioner(model, (example_input(cfg),))
    for at in splits:
        try:
            parts.plan(at)
        except SplitError as e:
            raise UsageError(f"{flag} {at}: {one_line(str(e))} (all of them: splitcomp "
                             f"candidates --model {name})") from None


# -- data ---------------------------------------------------------------------------------------
def open_data(source: str | Path, cfg: ModelConfig | None = None, limit: int | None = None,
              flag: str = "--data") -> ImageFolderDataset:
    """The dataset (listed, not read) in ``cfg``'s preprocessing; :class:`UsageError` for a
    missing, empty or unreadable source, and a warning when its labels do not fit the model."""
    try:
        ds = load_dataset(source, cfg.preprocess() if cfg is not None else None, limit=limit)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise UsageError(f"{flag} {source}: {one_line(str(e))}") from None
    if len(ds) == 0:
        raise UsageError(f"{flag} {source}: no images")
    if cfg is not None:
        problem = label_mismatch(cfg, ds)
        if problem:
            warn(f"{flag} {source}: {problem}")
    return ds


def label_mismatch(cfg: ModelConfig, ds: ImageFolderDataset) -> str | None:
    """Why the labels of ``ds`` may not be the classes ``cfg``'s model predicts, if so (e.g.
    CIFAR-10 labels for an ImageNet model: top-1 then means nothing)."""
    n = cfg.num_classes
    if not n or not len(ds):
        return None
    top = max(label for _, label in ds.samples)
    if top >= n:
        return (f"labels go up to {top} but {cfg.name} predicts {n} classes: top-1 counts "
                "nothing right for those images")
    if ds.classes is not None and len(ds.classes) != n:
        return (f"{len(ds.classes)} classes, but {cfg.name} predicts {n}"
                + (f" ({cfg.dataset})" if cfg.dataset else "") + ": the labels are unlikely to "
                "mean the model's classes, so top-1 may be meaningless")
    return None


# -- codecs -----------------------------------------------------------------------------------
def codec_name(name: str, flag: str = "--codec") -> str:
    """A registered codec name; :class:`UsageError` with the close ones otherwise."""
    if name not in codecs.available():
        raise UsageError(f"{flag} {name}: no such codec; {_suggest(name, codecs.available())}"
                         f"available: {', '.join(codecs.available())}")
    return name


def parse_params(codec: str, items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> codec parameters, each converted to its declared kind
    (:class:`UsageError`: not ``k=v``, not a parameter of the codec, not of its kind)."""
    spec = {p.name: p for p in codecs.codec_class(codec_name(codec)).params_spec}
    out: dict[str, Any] = {}
    for item in items:
        key, value = split_param(item)
        if key not in spec:
            raise UsageError(f"--param {key}: {codec} has no parameter {key!r}; it has "
                             f"{', '.join(sorted(spec)) or 'none'} (splitcomp codecs -v)")
        kind = spec[key].kind
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("1", "true", "yes")
            else:
                out[key] = kind(value)
        except ValueError:
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise UsageError(f"--param {key}: {value!r} is not {article} {kind.__name__}") \
                from None
    return out


def build_codec(name: str, params: dict[str, Any], quality: float | None = None) -> Codec:
    """The codec with ``params`` (and ``--quality`` on its knob), made now so that a value out
    of its declared range is a :class:`UsageError` before any work."""
    params = dict(params)
    if quality is not None:
        knob = codecs.codec_class(codec_name(name)).quality_param
        if not knob:
            raise UsageError(f"--quality: codec {name} has no quality knob (use --param)")
        params[knob] = quality
    try:
        return codecs.get(codec_name(name), **params)
    except (TypeError, ValueError) as e:
        knob = codecs.codec_class(name).quality_param
        spec = {p.name: p for p in codecs.codec_class(name).params_spec}
        what = "--quality" if quality is not None and knob and knob in str(e) else "--param"
        hint = ""
        if what == "--quality" and knob in spec and spec[knob].low is not None:
            hint = f" (its range: {spec[knob].low:g} .. {spec[knob].high:g})"
        raise UsageError(f"{what}: codec {name}: {one_line(str(e)).strip(chr(39))}{hint}") \
            from None


# -- servers ---------------------------------------------------------------------------------
def check_reachable(url: str, flag: str = "--url", timeout_s: float = 5.0) -> None:
    """Something answers at ``url`` (``ws://HOST:PORT``; probed with ``GET /healthz``, which a
    splitcomp server answers without a token); :class:`UsageError` when the connection is
    refused, the host unknown, nothing answers in time or the URL is malformed. Any answer,
    or a TLS problem (left to the client, which knows ``--ca``), counts as reachable."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise UsageError(f"{flag} {url}: expected ws://HOST:PORT (or wss://)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise UsageError(f"{flag} {url}: not a port number") from None
    probe = http_url(url.replace("http://", "ws://", 1).replace("https://", "wss://", 1),
                     "/healthz")
    try:
        opener = urllib.request.build_opener(  # no proxy: the client connects directly
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
        opener.open(probe, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # something answered
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, ConnectionRefusedError):
            raise UsageError(f"{flag} {url}: connection refused, nothing listens there (start "
                             "`splitcomp serve` first, or check host and port)") from None
        if isinstance(reason, socket.gaierror):
            raise UsageError(f"{flag} {url}: unknown host {parts.hostname!r}") from None
        if isinstance(reason, TimeoutError | socket.timeout):
            raise UsageError(f"{flag} {url}: no answer within {timeout_s:g} s") from None
        if isinstance(reason, OSError) and reason.errno in (errno.EHOSTUNREACH,
                                                            errno.ENETUNREACH):
            raise UsageError(f"{flag} {url}: {reason.strerror}") from None
        # TLS and other protocol problems: the client reports them with more context


def check_port_free(host: str, port: int) -> None:
    """The server can bind ``host:port`` (port 0: any); :class:`UsageError` otherwise."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be in 0 .. 65535")
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(bind_problem(host, port, e)) from None


def bind_problem(host: str, port: int, e: OSError) -> str:
    """One line for a failed bind."""
    if e.errno == errno.EADDRINUSE:
        return (f"--port {port}: already in use on {host} (another server?); choose another "
                "port, or --port 0 for any free one")
    if e.errno == errno.EACCES:
        return f"--port {port}: not allowed (ports below 1024 need privileges)"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"--host {host}: not an address of this machine"
    return f"cannot listen on {host}:{port}: {e.strerror or e}"


def load_tokens(path: str | Path | None) -> Tokens | None:
    """The ``--tokens`` file read and checked (docs/protocol.md); None without one."""
    if path is None:
        return None
    try:
        return Tokens.load(path)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--tokens {path}: {getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:
        raise UsageError(f"--tokens: {one_line(str(e))} (format: one 'client_id token' a line, "
                         "docs/protocol.md)") from None


def require_file(path: str | Path | None, flag: str) -> None:
    """``path`` (when given) is an existing file."""
    if path is not None and not Path(path).expanduser().is_file():
        raise UsageError(f"{flag} {path}: no such file")


# -- units ------------------------------------------------------------------------------------
_BARE_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def with_unit(flag: str, value: str | None, example: str) -> str | None:
    """``value`` unless it is a bare number: :class:`UsageError` asking for a unit (a bare
    ``10`` would silently mean 10 bit/s or 10 s)."""
    if value is not None and _BARE_NUMBER.fullmatch(value):
        raise UsageError(f"{flag} {value.strip()}: give a unit, e.g. {value.strip()}{example}")
    return value
