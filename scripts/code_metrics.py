"""Size and shape of the featx package, read with ``ast`` (nothing is imported or run).

Prints what issue 23 measures: functions over 80 and over 150 lines, the public functions with the
most parameters, modules over 800 lines, and import cycles between featx modules, counting imports
made inside functions too. Lines are source lines without docstrings (a function's length is its
``end_lineno - lineno + 1`` less the lines of its own and its nested docstrings).

    python scripts/code_metrics.py [PACKAGE_DIR]      # default: featx/ beside this script

Exit status 0 always: it reports, ``tests/test_layers.py`` enforces.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def docstring_lines(node: ast.AST) -> int:
    """Lines taken by docstrings directly in ``node`` and in every function or class inside it."""
    total = 0
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = inner.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                total += body[0].end_lineno - body[0].lineno + 1
    return total


def function_length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1 - docstring_lines(node)


def parameter_count(node: ast.FunctionDef) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    n = len([x for x in names if x not in ("self", "cls")])
    return n + (a.vararg is not None) + (a.kwarg is not None)


def import_edges(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> list[tuple[str, int, list]]:
    """Every import of a featx module in a module, inside functions too: ``(target, line, names)``.

    ``from featx.a import b`` imports the module ``featx.a.b`` when it is one (``known``), else names from
    ``featx.a``; ``names`` lists what an ``ImportFrom`` takes (empty for ``import featx.a``).
    """
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "featx":
                continue
            plain = []
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    edges.append((f"{target}.{alias.name}", node.lineno, []))
                else:
                    plain.append(alias.name)
            if plain:
                edges.append((target, node.lineno, plain))
        elif isinstance(node, ast.Import):
            edges += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "featx"]
    return edges


def load_package(root: Path) -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p, root): (p, ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for p in sorted(root.rglob("*.py"))}


def import_graph(modules: dict[str, tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    """Module -> the featx modules it imports (itself excluded)."""
    known = set(modules)
    return {name: {t for t, _, _ in import_edges(tree, name, path.name == "__init__.py", known)
                   if t in known and t != name}
            for name, (path, tree) in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "featx"
    modules = load_package(root)
    functions, lengths = [], {}
    for name, (path, tree) in modules.items():
        lengths[name] = len(path.read_text(encoding="utf-8").splitlines())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((function_length(node), parameter_count(node), f"{name}.{node.name}",
                                  not node.name.startswith("_")))
    over80 = sorted((f for f in functions if f[0] > 80), reverse=True)
    print(f"modules: {len(modules)}, lines: {sum(lengths.values())}, functions: {len(functions)}")
    print(f"functions over 80 lines: {len(over80)}; over 120: {sum(f[0] > 120 for f in functions)}; "
          f"over 150: {sum(f[0] > 150 for f in functions)}")
    for length, _, qual, _ in over80:
        print(f"  {length:4d}  {qual}")
    public = sorted((f for f in functions if f[3]), key=lambda f: -f[1])
    print(f"public functions with more than 12 parameters: {sum(f[1] > 12 for f in public)}; the largest:")
    for _, params, qual, _ in public[:8]:
        print(f"  {params:4d}  {qual}")
    big = sorted(((n, m) for m, n in lengths.items() if n > 800), reverse=True)
    print(f"modules over 800 lines: {len(big)}")
    for n, m in big:
        print(f"  {n:5d}  {m}")
    found = cycles(import_graph(modules))
    print(f"import cycles (imports inside functions included): {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
