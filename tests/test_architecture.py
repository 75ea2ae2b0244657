"""The package's shape, read from the source with `ast` (nothing is imported):

- imports flow one way: base -> nets -> formats/IO -> registry -> capabilities -> web -> cli, and form no circle
  (function-level imports count: a lazy import is still a dependency);
- every module has a layer (a new module fails here until it is placed);
- no function in the package is longer than 100 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "machinegaze"

# Layers, lowest first. A module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        ("machinegaze", "machinegaze.progress", "machinegaze.perf", "machinegaze.device", "machinegaze.distributed"),
    ),
    # Pure modules: nn.Modules and their math; they load nothing (zoo builds them, checkpoints fills them).
    (
        "nets",
        (
            "machinegaze.nets",
            "machinegaze.nets.*",
            "machinegaze.detect.model",
            "machinegaze.detect.anyof",
            "machinegaze.detect.native",
        ),
    ),
    # Formats and IO: weight files (pickle, safetensors, converters), image files, atomic writes.
    ("io", ("machinegaze.checkpoints", "machinegaze.data")),
    # The registry: a name -> a ready model; the one place that loads weights.
    ("registry", ("machinegaze.zoo",)),
    (
        "capabilities",
        (
            "machinegaze.generate",
            "machinegaze.mix",
            "machinegaze.project",
            "machinegaze.dream",
            "machinegaze.uncanny",
            "machinegaze.align",
            "machinegaze.train",
            "machinegaze.metrics",
            "machinegaze.dataset",
            "machinegaze.tour",
            "machinegaze.detect",
            "machinegaze.detect.*",
        ),
    ),
    ("web", ("machinegaze.web", "machinegaze.web.*")),
    ("cli", ("machinegaze.cli", "machinegaze.cli.*")),  # `gaze serve` starts the web app
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(name: str, modules: set[str]) -> str | None:
    """The longest module prefix of a dotted name (`machinegaze.data.open_image` -> `machinegaze.data`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(tree: ast.AST, here: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules a module's source imports, anywhere in it (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: climb from this module's package
                pkg = here.split(".") if is_package else here.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {m for t in targets if t.split(".")[0] == "machinegaze" and (m := resolve(t, modules))}
    found.discard(here)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {
        m: imports_of(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py", modules)
        for m, p in files.items()
    }


def layer_of(module: str, layers=LAYERS) -> int:
    """Index of the module's layer; a module matched by no pattern is an error."""
    for i, (_, patterns) in enumerate(layers):
        for pat in patterns:
            if module == pat or (pat.endswith(".*") and module.startswith(pat[:-1])):
                return i
    raise KeyError(module)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if layer_of(d, layers) > layer_of(m, layers):
                bad.append(f"{m} ({layers[layer_of(m, layers)][0]}) imports {d} ({layers[layer_of(d, layers)][0]})")
    return bad


def long_functions(root: Path = PACKAGE, limit: int = 100) -> list[str]:
    out = []
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{p.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


# ---------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    missing = []
    for m in graph:
        try:
            layer_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"modules without a layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_the_package_has_no_import_circle(graph):
    assert len(graph) > 30 and graph["machinegaze.zoo"] >= {"machinegaze.checkpoints"}  # the parser sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lower_layers_never_import_upper_ones(graph):
    assert layer_violations(graph) == []


def test_no_function_is_longer_than_100_lines():
    assert long_functions() == []


# ---------------------------------------------------------------- the checks catch planted violations
def test_a_planted_circle_and_an_upward_import_are_caught():
    good = {
        "machinegaze": set(),
        "machinegaze.nets.a": {"machinegaze"},
        "machinegaze.zoo": {"machinegaze.nets.a"},
        "machinegaze.mix": {"machinegaze.zoo", "machinegaze.nets.a"},
    }
    assert find_cycle(good) is None and layer_violations(good) == []
    upward = {**good, "machinegaze.nets.a": {"machinegaze", "machinegaze.zoo"}}
    assert layer_violations(upward) == ["machinegaze.nets.a (nets) imports machinegaze.zoo (registry)"]
    assert find_cycle(upward) == ["machinegaze.nets.a", "machinegaze.zoo", "machinegaze.nets.a"]
    same_layer = {**good, "machinegaze.generate": {"machinegaze.mix"}, "machinegaze.mix": {"machinegaze.generate"}}
    assert layer_violations(same_layer) == []  # same layer: allowed by the layer rule ...
    assert find_cycle(same_layer) == [
        "machinegaze.generate",
        "machinegaze.mix",
        "machinegaze.generate",
    ]  # ... not circles
    with pytest.raises(KeyError):
        layer_of("machinegaze.newthing")


def test_the_parser_sees_lazy_relative_and_attribute_imports(tmp_path):
    pkg = tmp_path / "machinegaze"
    (pkg / "nets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets" / "__init__.py").write_text("")
    (pkg / "zoo.py").write_text("from machinegaze.nets.a import Net\n")
    (pkg / "nets" / "a.py").write_text("def f():\n    from .. import zoo\n    import machinegaze.data.thing\n")
    (pkg / "data.py").write_text("from machinegaze import GazeError\n")
    g = import_graph(pkg)
    assert g["machinegaze.nets.a"] == {"machinegaze.zoo", "machinegaze.data"}
    assert g["machinegaze.zoo"] == {"machinegaze.nets.a"} and g["machinegaze.data"] == {"machinegaze"}
    assert find_cycle(g) == ["machinegaze.nets.a", "machinegaze.zoo", "machinegaze.nets.a"]
    (pkg / "long.py").write_text("def f():\n" + "    x = 1\n" * 100)
    assert long_functions(pkg) == ["machinegaze/long.py:1 f (101 lines)"]
