"""The layer rule of ``docs/architecture.md``: a package imports only from its own layer's
package and the layers below it, never upward (not even lazily inside a function or under
``TYPE_CHECKING``). The order is read from the table in the doc, so the doc and this test
cannot drift apart; every package in the tree must be in the table, and every package in the
table in the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "splitcomp"
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 500

_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|")


def layers() -> dict[str, int]:
    """package -> layer (0 at the bottom), from the doc's layer table."""
    found = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            found[m.group(2)] = int(m.group(1))
    assert found, f"no layer table in {DOC}"
    return found


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(path: Path, source: str | None = None) -> list[tuple[str, int]]:
    """Every ``splitcomp`` module ``path`` imports (absolute, relative resolved), with lines;
    ``source``: its text, if not the file's."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m == "splitcomp" or m.startswith("splitcomp.")]


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports() -> list[str]:
    order = layers()
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = _package_of(".".join(_module_name(path)))
        if mine not in order:
            continue
        for module, line in imports_of(path):
            theirs = _package_of(module)
            if theirs not in order and theirs not in (None, "__version__"):
                # a name the top-level package exposes lazily (its API): a back door upward
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {module} from "
                           "the top-level package (only packages and __version__ may be)")
            elif theirs in order and theirs != mine and order[theirs] >= order[mine]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} (layer {order[mine]}) "
                           f"imports {module} (layer {order[theirs]})")
    return bad


def test_the_doc_lists_every_package() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(layers()) == packages


def test_no_upward_or_sideways_imports() -> None:
    bad = upward_imports()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_check_sees_lazy_relative_and_type_checking_imports() -> None:
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..runtime import x\n"
           "def f():\n    from splitcomp.plan import planner\n    from .. import cli\n"
           "    import splitcomp.bench.setup\n")
    got = imports_of(PACKAGE / "codecs" / "probe.py", src)
    assert {_package_of(m) for m, _ in got} == {"runtime", "plan", None, "cli", "bench"}
    assert ("splitcomp.runtime.x", 3) in got and ("splitcomp.cli", 6) in got


def test_the_top_level_api_is_lazy_and_only_the_top_imports_it() -> None:
    """``splitcomp/__init__.py`` is no layer: it exposes the API of the packages above the
    bottom lazily (PEP 562), and no package may reach that API through it."""
    import subprocess
    import sys

    src = "from .. import SplitClient\nfrom .. import __version__, codecs\n"
    got = {_package_of(m) for m, _ in imports_of(PACKAGE / "codecs" / "probe.py", src)}
    assert "SplitClient" in got  # upward_imports flags it: not a package, not __version__
    code = ("import sys, splitcomp; assert 'torch' not in sys.modules; "
            "assert callable(splitcomp.split) and splitcomp.SplitClient.__name__ == "
            "'SplitClient'; assert set(splitcomp.__all__) == {'__version__', *splitcomp._LAZY}; "
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_no_module_is_too_long() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)
