"""The package's folders are its layers, and imports only point down (docs/architecture.md).

Reads the import graph from the source (the `ast` of every module under scripts/producer, imports inside
functions included, `if TYPE_CHECKING:` imports too) and fails on an import that points up the layer order or
on a cycle between modules. There are no exceptions: the last edges that broke the rule were removed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scripts" / "producer"

# Bottom to top. A module may import its own layer and the layers below it. The first part of a module's
# name below `producer.` is its layer (a file at the top of the package is a layer of its own).
LAYERS = ("__init__", "errors", "values", "files", "facts", "sizing", "modelfiles", "testing", "cli", "engines",
          "runs", "production", "makers", "workflow", "commands")
SAME_LAYER = {"errors": "values"}  # the bottom: neither imports the other, both may be imported by anything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, anywhere in it (names below `producer.`)."""
    here = module_name(path)
    package = here.split(".")[:-1] if path.name != "__init__.py" else here.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(["producer", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names] + [module]
        else:
            continue
        for name in names:
            if name.startswith("producer."):
                name = name[len("producer."):]
                while name and name not in modules:  # producer.files.outputs.write_json_atomic -> files.outputs
                    name = name.rpartition(".")[0]
                if name and name != here:
                    found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(path, modules) for name, path in paths.items()}
    for name in list(graph):  # a package's __init__ is not a dependency of its modules' importers
        graph[name] = {m for m in graph[name] if not (paths[m].name == "__init__.py" and m != "__init__")}
    return graph


def layer(module: str) -> int:
    top = module.split(".")[0]
    top = SAME_LAYER.get(top, top)
    if top not in LAYERS:
        raise AssertionError(f"producer.{module} is in no layer: add its folder to LAYERS in {__file__}")
    return LAYERS.index(top)


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"producer.{a} imports producer.{b}, a layer above it"
                  for a, deps in graph.items() for b in deps if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer(module)


def test_imports_only_point_down():
    assert upward(import_graph()) == []


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_package_never_imports_the_scripts():
    scripts = {p.stem for p in PACKAGE.parent.glob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & scripts, f"{path} imports a script"
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                pytest.fail(f"{path.relative_to(PACKAGE.parent)} touches sys.path: the package is imported, it "
                            "does not import the scripts")


@pytest.mark.parametrize(("edge", "expect"), [
    (("files.outputs", "engines.wan.wan"), "a layer above it"),
    (("errors", "values"), None),
])
def test_the_checks_can_fail(edge, expect):
    """An upward import and a cycle are caught (the graph with one edge added)."""
    graph = import_graph()
    graph[edge[0]] = graph[edge[0]] | {edge[1]}
    found = upward(graph)
    if expect:
        assert any(f"producer.{edge[0]} imports producer.{edge[1]}, {expect}" in line for line in found)
    else:
        assert found == []
    graph["errors"] = graph["errors"] | {"values"}  # errors <-> values: one layer, but a cycle
    graph["values"] = graph["values"] | {"errors"}
    assert ["errors", "values"] in cycles(graph)
