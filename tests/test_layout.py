"""The package's layering: every import points down, nothing sits flat at the top that belongs
in a layer, every exception is a GraphopError (every warning a GraphopWarning), and the public
API imports."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import graphop

PKG = Path(graphop.__file__).resolve().parent

#: layers from the bottom up; a module may import its own layer and the layers below it
LAYERS = ["errors", "memory", "jit", "geometry", "io", "layers", "models", "data", "training", "inference",
          "experiments", "bench", "testing", "cli"]
#: the only modules flat at the top of the package (``memory``: the machine's free memory,
#: stdlib only, for the size guards of every layer; ``jit``: the compiled kernels' switch and
#: decorator, stdlib only at import, for the builders of every layer)
TOP = {"__init__", "__main__", "errors", "memory", "jit", "testing"}


def _component(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "graphop":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Every graphop module ``path`` imports (anywhere in the file), with its line."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
    return [(t, n) for t, n in out if t.startswith("graphop")]


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_only_a_handful_of_modules_are_flat_at_the_top():
    flat = {p.stem for p in PKG.glob("*.py")}
    assert flat <= TOP, f"modules flat at the top of graphop/: {sorted(flat - TOP)}"


def test_every_import_points_down():
    bad = []
    for path, module in _modules():
        src = _component(module)
        if src in ("__init__", "__main__"):
            continue
        for target, line in _imports(path, module):
            dst = _component(target)
            if dst == "__init__" and target == "graphop":
                # ``from graphop import __version__`` only: the version is no layer
                names = [a.name for n in ast.walk(ast.parse(path.read_text()))
                         if isinstance(n, ast.ImportFrom) and n.lineno == line for a in n.names]
                if set(names) <= {"__version__"}:
                    continue
            if dst in (None, src):
                continue
            if LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "imports pointing up:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    """Module-level imports form a DAG (function-local imports are allowed to be lazy, but
    must still point down: see the test above)."""
    graph = {}
    for path, module in _modules():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("graphop"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[module] = {d for d in deps if d != module}
    mods = set(graph)
    graph = {m: {d for d in ds if d in mods} for m, ds in graph.items()}
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            # importing a package's __init__ from inside that package is the usual re-export
            if m.startswith(d + "."):
                continue
            if state.get(d) == 1:
                raise AssertionError(" -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_every_exception_graphop_defines_is_a_graphop_error():
    from graphop.errors import GraphopError, GraphopWarning

    bad = []
    for info in pkgutil.walk_packages(graphop.__path__, "graphop."):
        if info.name.startswith("graphop.cli.worker") or info.name == "graphop.__main__":
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if not (inspect.isclass(obj) and issubclass(obj, Exception)
                    and obj.__module__ == mod.__name__):
                continue
            base = GraphopWarning if issubclass(obj, Warning) else GraphopError
            if not issubclass(obj, base):
                bad.append(f"{mod.__name__}.{name}")
    assert not bad, f"exceptions outside GraphopError: {bad}"


@pytest.mark.parametrize("name", graphop.__all__)
def test_public_api_resolves(name):
    assert getattr(graphop, name) is not None


def test_every_warning_graphop_issues_names_a_graphop_warning():
    """A ``warnings.warn`` without a category is a bare UserWarning, which users cannot filter
    as graphop's; every call in the package passes a GraphopWarning (sub)class by name."""
    from graphop import errors

    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "warn" and getattr(node.func.value, "id", "") == "warnings"):
                continue
            cat = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "category"), None)
            name = cat.id if isinstance(cat, ast.Name) else getattr(cat, "attr", None)
            cls = getattr(errors, name, None) if name else None
            if not (inspect.isclass(cls) and issubclass(cls, errors.GraphopWarning)):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not bad, f"warnings without a GraphopWarning category: {bad}"
