"""The package's shape, measured from its own source: import cycles among ``ferrollm`` modules
(runtime imports, lazy ones inside functions included, ``if TYPE_CHECKING:`` ones excluded),
private names reached on another module's objects, and the modules at the package root.

    python tools/layout.py            # prints the figures and the offenders
    python tools/layout.py --check    # exits 1 unless there is no cycle and no private reach

``tests/test_layout.py`` runs the check, so the suite fails when a cycle or a reach comes back.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "ferrollm"
MAX_ROOT_MODULES = 15
# Underscored names that are public protocols of the standard library, not somebody's private.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_field_defaults", "_make", "_value_", "_name_"}
# Receivers whose underscored attributes are the object's own (or the extension's public API).
OWN_RECEIVERS = {"self", "cls", "_core"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports there never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The ferrollm module an import of ``name`` runs: the longest known prefix."""
    if name.startswith("ferrollm._core"):  # the extension: no Python, no imports
        return None
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_blocks(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` runs the submodule when there is one, else pkg itself.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                    for a in node.names
                    if a.name != "_core"  # the extension module: no Python, no imports
                ]
            for t in targets:
                dep = _resolve(t, known)
                # Importing a.b.c runs a.b's __init__ first: an edge too (not the root
                # package's, which imports the public names of everything).
                if dep and dep != mod:
                    graph[mod].add(dep)
                while dep and "." in dep:
                    dep = dep.rpartition(".")[0]
                    if dep != "ferrollm" and not mod.startswith(dep + "."):
                        graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def private_reaches(known: dict[str, Path]) -> list[str]:
    """``obj._name`` on a receiver other than self/cls, and ``from ferrollm.x import _name``."""
    found = []
    for path in known.values():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attr = node.attr
                if not attr.startswith("_") or attr.startswith("__") or attr in PUBLIC_UNDERSCORED:
                    continue
                recv = node.value
                if isinstance(recv, ast.Name) and recv.id in OWN_RECEIVERS:
                    continue
                if isinstance(recv, ast.Call) and getattr(recv.func, "id", None) == "super":
                    continue
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: .{attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ferrollm"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name != "_core":
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: import {a.name}")
    return found


def root_modules(root: Path = PACKAGE) -> list[str]:
    return sorted(p.name for p in root.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def report() -> dict:
    known = modules()
    return {
        "cycles": cycles(imports(known)),
        "private": private_reaches(known),
        "root": root_modules(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    r = report()
    for c in r["cycles"]:
        print("cycle:", " <-> ".join(c))
    for p in r["private"]:
        print("private:", p)
    print(f"import cycles: {len(r['cycles'])}")
    print(f"private names reached on other objects: {len(r['private'])}")
    print(f"modules at the package root (besides __init__/__main__): {len(r['root'])}")
    bad = r["cycles"] or r["private"] or len(r["root"]) > MAX_ROOT_MODULES
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
