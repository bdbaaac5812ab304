"""docs/architecture.md stays true: every `bench...` name it gives exists (a module, or an attribute
of one), every module under bench/ sits in its layer table, and no module imports from a layer above
its own; only the command layer imports the emulated phone."""

import ast
import functools
import importlib
import re

from conftest import REPO

PAGE = (REPO / "docs" / "architecture.md").read_text()
NAME = re.compile(r"`(bench(?:\.[A-Za-z_][A-Za-z0-9_]*)*)`")


@functools.lru_cache(maxsize=1)
def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((REPO / "bench").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text())
    return found


def _layers() -> dict[str, int]:
    layers = {}
    for row in re.findall(r"^\| (\d) \| (.+?) \| .+ \|$", PAGE, re.M):
        for name in NAME.findall(row[1]):
            assert name not in layers, f"{name} is in two rows of the layer table"
            layers[name] = int(row[0])
    return layers


def _imports(name: str, tree: ast.Module, package: bool) -> set[str]:
    """The bench modules `name` imports (a `from .x import y` of a module counts as that module)."""
    known = _modules()
    here = name.split(".") if package else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("bench"):
                continue
            for alias in node.names:
                targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name.startswith("bench"))
    return targets - {name}


def _exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def test_every_name_on_the_page_exists():
    missing = [name for name in set(NAME.findall(PAGE)) if not _exists(name)]
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_every_module_is_in_the_layer_table():
    layers, modules = _layers(), _modules()
    assert set(modules) - set(layers) == set(), f"not in the layer table: {sorted(set(modules) - set(layers))}"
    assert set(layers) - set(modules) == set(), f"the table names no such module: {sorted(set(layers) - set(modules))}"


def test_no_module_imports_from_a_layer_above_its_own():
    layers, modules = _layers(), _modules()
    upward = []
    for name, tree in modules.items():
        package = (REPO / "bench").joinpath(*name.split(".")[1:], "__init__.py").is_file()
        for target in _imports(name, tree, package):
            layer = layers.get(target, layers.get(target.rsplit(".", 1)[0]))
            if layer is not None and layer > layers[name]:
                upward.append(f"{name} (layer {layers[name]}) imports {target} (layer {layer})")
            if target.startswith("bench.sim") and not name.startswith(("bench.sim", "bench.cli")):
                upward.append(f"{name} imports the emulated phone ({target}): only bench.cli may")
    assert not upward, "\n".join(upward)


def test_the_rule_has_teeth():
    tree = ast.parse("from .runner import run_benchmark\nfrom . import cli\n")
    assert _imports("bench.stats", tree, package=False) == {"bench.runner", "bench.cli"}
