"""model_serving's imports run one way: api -> loading -> engines.

Every module is parsed (not imported) with `ast`, so imports inside functions
and `importlib.import_module("model_serving...")` calls count too. The modules
at the top of the package (config, errors, logs, metrics, ...) are shared: any
layer may import them, and they import no layer. `__main__` wires the layers
together and may import all of them; nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "serving" / "model_serving"
ROOT = "model_serving"
LAYERS = ("engines", "loading", "api")  # each may import the ones before it, never the ones after
ENTRY = "__main__"
_DYNAMIC = {"import_module", "__import__", "importorskip"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The layer of a model_serving module, ENTRY, or "shared" (a top-level module or the package itself)."""
    parts = module.split(".")
    if len(parts) < 2:
        return "shared"
    return parts[1] if parts[1] in (*LAYERS, ENTRY) else "shared"


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported name) for every model_serving import anywhere in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == ROOT:  # `from model_serving import api`: the names are the modules
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _DYNAMIC and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == ROOT or name.startswith(ROOT + ".")]


def allowed(importer: str, imported: str) -> bool:
    if imported == ENTRY:
        return importer == ENTRY
    if importer == ENTRY or imported == "shared":
        return True
    if importer == "shared":
        return False  # shared modules sit below every layer
    return LAYERS.index(imported) <= LAYERS.index(importer)


def violations(source: str, module: str, where: str, is_package: bool = False) -> list[str]:
    importer = part_of(module)
    problems = []
    for line, name in imports_of(source, module, is_package):
        target = part_of(name)
        if not allowed(importer, target):
            may = [layer for layer in LAYERS if allowed(importer, layer)]
            problems.append(
                f"{where}:{line}: {module} ({importer}) imports {name} ({target}); "
                f"{importer} may import {', '.join(may) or 'no layer'} and the shared top-level modules only"
            )
    return problems


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_run_from_api_to_loading_to_engines() -> None:
    problems = []
    for path in all_modules():
        where = str(path.relative_to(PACKAGE.parent))
        problems += violations(path.read_text(), module_name(path), where, is_package=path.name == "__init__.py")
    assert not problems, "imports against the layering (api -> loading -> engines):\n" + "\n".join(problems)


def test_every_layer_is_a_package_with_modules() -> None:
    parts = {part_of(module_name(p)) for p in all_modules()}
    assert set(LAYERS) <= parts
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), f"{layer} is not a package"


@pytest.mark.parametrize(
    ("module", "source", "offending"),
    [
        ("model_serving.engines.x", "def f():\n    from model_serving.loading import x\n", "model_serving.loading"),
        ("model_serving.engines.codegen.x", "from ...api.app import ServingApp\n", "model_serving.api.app"),
        ("model_serving.loading.x", "import model_serving.api.service\n", "model_serving.api.service"),
        ("model_serving.loading.x", "from model_serving import api\n", "model_serving.api"),
        ("model_serving.metrics", "from model_serving.engines import predictor\n", "model_serving.engines"),
        ("model_serving.engines.x", "importlib.import_module('model_serving.loading.x')\n", "model_serving.loading.x"),
        ("model_serving.api.x", "from model_serving.__main__ import main\n", "model_serving.__main__"),
    ],
)
def test_the_check_names_the_offending_import(module: str, source: str, offending: str) -> None:
    found = violations(source, module, "x.py")
    assert found and offending in found[0] and found[0].startswith("x.py:")


def test_the_check_lets_the_allowed_directions_through() -> None:
    sources = {
        "model_serving.api.x": "from model_serving.loading import loader\nfrom model_serving.engines import verify\n",
        "model_serving.loading.x": "from ..engines.verify import verify\nfrom model_serving.metrics import Metrics\n",
        "model_serving.engines.x": "from .codegen import generate\nfrom model_serving.errors import LoadError\n",
        "model_serving.__main__": "from model_serving.api.app import ServingApp\n",
    }
    for module, source in sources.items():
        assert violations(source, module, "x.py") == []
