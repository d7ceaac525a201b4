"""The layer rule and import hygiene: `index` never imports `curate`, signals never import select, the
module-level import graph of curate/ and index/ has no cycle, and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("curate", "index"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def imported(f: Path, mods: dict[str, Path], top_level: bool) -> set[str]:
    """Project modules `f` imports (at module level only when `top_level`): `from p import m` counts as
    importing p.m when that is a module, else p."""
    tree = ast.parse(f.read_text())
    out = set()
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
    return out & set(mods)


def test_layer_rule():
    mods = modules()
    bad = [(m, i) for m, f in mods.items() for i in imported(f, mods, top_level=False)
           if (m.startswith("index") and i.startswith("curate"))
           or (m.startswith("curate.signals") and i.startswith("curate.select"))]
    assert not bad, f"imports against the layer rule: {bad}"


def test_no_import_cycle():
    mods = modules()
    graph = {m: imported(f, mods, top_level=True) for m, f in mods.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_every_module_imports_on_its_own():
    """Each module imported first in a clean slate of project modules (a cycle or a missing import that only
    an earlier import hid fails here); one process, so the heavy libraries load once."""
    names = sorted(modules())
    code = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "bad = []\n"
        "for name in names:\n"
        "    for k in [k for k in sys.modules if k.split('.')[0] in ('curate', 'index')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
