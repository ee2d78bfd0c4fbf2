"""The command-line tool's packaging, and the Lambda function's isolation from its dependencies."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import orgkeypolicy

REPO = Path(__file__).resolve().parent.parent
HANDLER = REPO / "handler"
CLI_ONLY = frozenset({"click", "rich", "cfn_flip", "cfn_tools", "yaml"})


def test_wheel_holds_the_package_and_the_entry_point_only(tmp_path: Path) -> None:
    # Built from a copy: a build writes build/ next to pyproject.toml.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(HANDLER, source / "handler", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--quiet", "-w", str(wheels), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == f"orgkeypolicy-{orgkeypolicy.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f"orgkeypolicy-{orgkeypolicy.__version__}.dist-info"
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    packages = {name.split("/")[0] for name in names}
    assert packages == {"orgkeypolicy", dist_info}
    for module in ("__init__.py", "__main__.py", "aws.py", "cli/__init__.py", "cli/main.py"):
        assert f"orgkeypolicy/{module}" in names
    assert not any(name.endswith("app.py") for name in names)
    assert "[console_scripts]\norgkeypolicy = orgkeypolicy.cli:main" in entry_points
    requires = {
        line.split(":", 1)[1].strip().split(">")[0].split("<")[0].split("=")[0].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    }
    assert requires == {"boto3", "cfn-flip", "click", "rich"}


def test_the_function_loads_none_of_the_tool_dependencies() -> None:
    probe = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(HANDLER)!r})\n"
        "import app\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(CLI_ONLY)!r} or m.startswith('orgkeypolicy.cli'))\n"
        "print(json.dumps({'app': app.__file__, 'loaded': loaded}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report["app"]) == HANDLER / "app.py"
    assert report["loaded"] == []


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_cli_package_imports_the_tool_dependencies() -> None:
    cli = HANDLER / "orgkeypolicy" / "cli"
    entry = HANDLER / "orgkeypolicy" / "__main__.py"
    outside = [p for p in HANDLER.rglob("*.py") if cli not in p.parents and p != entry]
    assert HANDLER / "app.py" in outside
    offenders = {str(p.relative_to(REPO)): _imports(p) & CLI_ONLY for p in outside}
    assert {path: names for path, names in offenders.items() if names} == {}
    assert _imports(cli / "sources.py") >= {"click", "cfn_tools", "yaml"}
