"""The import graph of mirror/, computed from the source (ARCHITECTURE.md section 3 is its output).

Every `mirror/**/*.py` is parsed with `ast`; each relative `from ... import` is resolved (a name
that is a submodule counts as that module) and classed as module-level, lazy (inside a
function) or TYPE_CHECKING. A module's layer is its longest chain of module-level and lazy
imports; cycles are found with Tarjan's algorithm.

    python scripts/import_graph.py            # the layer table and any cycle
    python scripts/import_graph.py --edges    # every edge, with its kind
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "mirror"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "mirror"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def edges() -> dict[str, dict[str, str]]:
    """module → {imported module: "top" | "lazy" | "typing"} (the strongest kind wins)."""
    mods = modules()
    strength = {"typing": 0, "lazy": 1, "top": 2}
    out: dict[str, dict[str, str]] = {m: {} for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if name != "mirror" else []
        package = base if is_pkg else base[:-1]
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, kind: str) -> None:
            for child in ast.iter_child_nodes(node):
                k = kind
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    k = "lazy" if kind == "top" else kind
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    for c in child.body:
                        visit_node(c, "typing")
                    for c in child.orelse:
                        visit_node(c, kind)
                    continue
                visit_node(child, k)

        def visit_node(child: ast.AST, k: str) -> None:
            if isinstance(child, ast.ImportFrom) and child.level > 0:
                up = package[: len(package) - (child.level - 1)] if child.level > 1 else package
                target = ".".join([*up, *(child.module.split(".") if child.module else [])])
                names = []
                for alias in child.names:
                    sub = f"{target}.{alias.name}" if target else alias.name
                    names.append(sub if sub in mods else target)  # a submodule, or a name in the package
                for t in names:
                    t = t or "mirror"
                    if t in mods and t != name and strength[k] > strength.get(out[name].get(t, ""), -1):
                        out[name][t] = k
            visit(child, k)

        visit(tree, "top")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return found


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    memo: dict[str, int] = {}

    def depth(v: str) -> int:
        if v not in memo:
            memo[v] = -1
            memo[v] = 1 + max((depth(w) for w in graph[v]), default=-1)
        return memo[v]

    for v in graph:
        depth(v)
    return memo


def main() -> int:
    e = edges()
    running = {m: {t for t, k in ts.items() if k != "typing"} for m, ts in e.items()}
    if "--edges" in sys.argv:
        for m, ts in sorted(e.items()):
            for t, k in sorted(ts.items()):
                print(f"{m} -> {t} [{k}]")
        return 0
    found = cycles(running)
    typing_only = [c for c in cycles({m: set(ts) for m, ts in e.items()}) if c not in found]
    by_layer: dict[int, list[str]] = {}
    for m, d in layers(running).items():
        by_layer.setdefault(d, []).append(m)
    print("| layer | modules |\n|---|---|")
    for d in sorted(by_layer):
        print(f"| {d} | {', '.join(sorted(by_layer[d]))} |")
    print(f"\ncycles (module-level and lazy imports): {found or 'none'}")
    print(f"cycles only through TYPE_CHECKING imports: {typing_only or 'none'}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
