"""The package's shape, as docs/architecture.md states it: layers that import only downwards, the bottom layer
importing nothing but `errors`, no import circle, no module over 400 lines, no function over 60 lines.

Imports are read from the source (every `import` and `from ... import`, at module level and inside functions), so
an import hidden in a function to dodge a circle counts as the circle it is."""

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "lmrecipes"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports (a name imported from a module counts as that module)."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def layers_from_the_docs() -> dict[str, int]:
    """docs/architecture.md's layer table: module (or package, ending in /) -> layer number."""
    layers = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        row = re.match(r"\| (\d+)\. [^|]+ \| ([^|]+) \|", line)
        if row:
            for entry in re.findall(r"`([\w/]+)`", row.group(2)):
                layers[entry] = int(row.group(1))
    return layers


LAYERS = layers_from_the_docs()


def layer_of(module: str) -> int | None:
    """The layer of a module: its own row, or its package's (`data/`); the package root `lmrecipes` is above all."""
    short = module.removeprefix("lmrecipes").lstrip(".")
    if not short:
        return max(LAYERS.values()) + 1
    parts = short.split(".")
    for depth in range(len(parts), 0, -1):
        key = ".".join(parts[:depth])
        if key in LAYERS:
            return LAYERS[key]
        if f"{key}/" in LAYERS:
            return LAYERS[f"{key}/"]
    return None


def package_of(module: str) -> str | None:
    """The package of the table (`metrics/`) a module belongs to, or None for a plain module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and f"{parts[1]}/" in LAYERS else None


def same_package(a: str, b: str) -> bool:
    return package_of(a) is not None and package_of(a) == package_of(b)


def test_the_layer_table_is_read_and_names_every_module():
    assert len(LAYERS) >= 20 and min(LAYERS.values()) == 0, "docs/architecture.md's table was not read"
    unplaced = [name for name in MODULES if layer_of(name) is None]
    assert not unplaced, f"modules missing from docs/architecture.md's layer table: {unplaced}"
    named = {entry.rstrip("/") for entry in LAYERS}
    gone = [entry for entry in named if not any(m == f"lmrecipes.{entry}" or m.startswith(f"lmrecipes.{entry}.")
                                                for m in MODULES)]
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"


def test_imports_go_down_the_layers_only():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in GRAPH.items() for target in targets
              if layer_of(target) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_the_bottom_layer_imports_nothing_of_the_package_but_errors():
    bottom = [name for name in MODULES if layer_of(name) == 0]
    assert "lmrecipes.launch" in bottom and "lmrecipes.errors" in bottom
    wrong = [f"{name} imports {target}" for name in bottom for target in GRAPH[name]
             if target != "lmrecipes.errors" and not same_package(name, target)]
    assert not wrong, "\n".join(wrong)


def import_circles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], 0
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circle():
    assert import_circles() == []


def test_the_circle_check_finds_a_circle():
    """The check itself: a made-up graph with a circle of three is found."""
    global GRAPH
    kept = GRAPH
    try:
        GRAPH = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert import_circles() == [["a", "b", "c"]]
    finally:
        GRAPH = kept


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name}: {len(source.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_module_outside_objectives_names_an_objective():
    """Objective-specific code lives in objectives/ only: elsewhere an objective is an instance that is asked, never
    a name that is tested (names in help texts and messages are prose, not values)."""
    from lmrecipes.objectives import OBJECTIVES

    pattern = re.compile(r"[\"'](" + "|".join(OBJECTIVES) + r")[\"']")
    named = [f"{path.relative_to(REPO)}:{number}" for name, path in MODULES.items()
             if not name.startswith("lmrecipes.objectives")
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not named, named
