"""Run a script as an edge device would: in a subprocess where ``import torch`` fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: a sitecustomize that makes ``import torch`` fail, as on a device without it
NO_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"no torch on this device ({name})")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")
#: the child's first lines: fail loudly if torch imports after all
PRELUDE = textwrap.dedent("""
    import json, sys
    try:
        import torch  # noqa: F401
        print("TORCH IMPORTED"); sys.exit(3)
    except ImportError:
        pass
""")


def run_without_torch(script: str, args: list[str], tmp: Path, timeout_s: float = 240) -> dict:
    """Run ``script`` (after :data:`PRELUDE`) with ``args`` where torch cannot be imported;
    returns the JSON object its last stdout line holds. Asserts it exited 0 and that no torch
    module was loaded."""
    shim = tmp / "no_torch_shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)]),
           "OMP_NUM_THREADS": "1"}
    code = PRELUDE + textwrap.dedent(script) + textwrap.dedent("""
        out["torch_loaded"] = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] == []
    return out
