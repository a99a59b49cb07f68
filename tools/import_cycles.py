"""Import cycles between the package's modules, function-level imports included.

Walks the syntax tree of every module under ``frontalab/`` (no module is imported or run) and
collects every ``import`` / ``from ... import`` statement wherever it stands: at the top, inside
functions and methods, or under ``if TYPE_CHECKING``. An edge A -> B means module A imports
module B (``from frontalab.x import y`` counts as an import of ``frontalab.x.y`` when that is a
module, else of ``frontalab.x``; importing a module imports its packages too, whose ``__init__``
modules count). Prints the strongly connected components of more than one module, and exits 1
when there is any.

    python tools/import_cycles.py [--package-dir frontalab] [--count-nested]

``--count-nested`` also lists the imports that stand inside a function body, with the reason
comment (``# deferred: ...``) each must carry.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(package_dir: Path) -> dict[str, Path]:
    root = package_dir.parent
    return {module_name(p, root): p for p in sorted(package_dir.rglob("*.py"))}


def _resolve(base: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return base
    parts = current.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[:len(anchor) - (level - 1)]
    return ".".join(anchor + ([base] if base else []))


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of one module."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int, bool]] = []
    is_package = path.name == "__init__.py"

    def add(target: str, line: int, nested: bool) -> None:
        # The longest known module the target names (or lies in).
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            found = ".".join(parts)
            if found != name:
                out.append((found, line, nested))

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno, nested)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child.module or "", child.level, name, is_package)
                for alias in child.names:
                    full = f"{base}.{alias.name}" if base else alias.name
                    add(full if full in known else base, child.lineno, nested)
            visit(child, inner)

    visit(tree, False)
    return out


def graph(package_dir: Path) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int, bool]]]]:
    found = modules(package_dir)
    known = set(found)
    edges: dict[str, set[str]] = {m: set() for m in found}
    raw: dict[str, list[tuple[str, int, bool]]] = {}
    for name, path in found.items():
        raw[name] = imports(name, path, known)
        for target, _, _ in raw[name]:
            edges[name].add(target)
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            for i in range(1, len(parts)):
                pkg = ".".join(parts[:i])
                if pkg in known and pkg != name and not name.startswith(pkg + "."):
                    edges[name].add(pkg)
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def nested_imports(package_dir: Path) -> list[tuple[Path, int, str]]:
    """(file, line, text) of every import statement inside a function body."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), str(path))

        def visit(node: ast.AST, nested: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)) and nested:
                    found.append((path, child.lineno, lines[child.lineno - 1].strip()))
                visit(child, nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(tree, False)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-dir", default=str(ROOT / "frontalab"))
    parser.add_argument("--count-nested", action="store_true", help="list the imports inside function bodies")
    args = parser.parse_args(argv)
    package_dir = Path(args.package_dir).resolve()
    edges, _ = graph(package_dir)
    found = cycles(edges)
    n_edges = sum(len(v) for v in edges.values())
    if args.count_nested:
        nested = nested_imports(package_dir)
        for path, line, text in nested:
            print(f"{path.relative_to(package_dir.parent)}:{line}: {text}")
        print(f"{len(nested)} imports inside function bodies")
    if found:
        for comp in found:
            print("import cycle: " + " <-> ".join(comp))
        print(f"{len(found)} import cycle(s) among {len(edges)} modules ({n_edges} import edges)")
        return 1
    print(f"no import cycles among {len(edges)} modules ({n_edges} import edges, function-level imports included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
