"""Cold start and package size: importing ``app`` in a fresh interpreter, and the SAM build."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUNCTION = "OrgKeyPolicyFunction"
LAYER = "DependenciesLayer"

_TIMED_IMPORT = (
    "import os, sys, time\n"
    "sys.path[:0] = sys.argv[1].split(os.pathsep)\n"
    "started = time.perf_counter()\n"
    "import app\n"
    "print(time.perf_counter() - started)\n"
)


def _base_environment() -> dict[str, str]:
    """No developer AWS settings, credentials that reach nothing, no SAM telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    env.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        SAM_CLI_TELEMETRY="0",
    )
    env.pop("PYTHONPATH", None)
    return env


def lambda_environment() -> dict[str, str]:
    """What the Lambda runtime and the template set that changes what importing ``app`` does:
    with ``AWS_LAMBDA_FUNCTION_NAME`` Powertools' Tracer is on and patches botocore."""
    env = _base_environment()
    env.update(
        AWS_LAMBDA_FUNCTION_NAME="org-key-policy",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
        AWS_EXECUTION_ENV="AWS_Lambda_python3.13",
        POWERTOOLS_SERVICE_NAME="OrgKeyPolicy",
        POWERTOOLS_METRICS_NAMESPACE="OrgKeyPolicy",
        POWERTOOLS_LOG_LEVEL="INFO",
        VERIFY_DELAY_SECONDS="1",
    )
    return env


@dataclass
class ImportTiming:
    label: str
    python: str
    runs: list[float] = field(default_factory=list)
    process_runs: list[float] = field(default_factory=list)
    slowest: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def process_median(self) -> float:
        return statistics.median(self.process_runs) if self.process_runs else float("nan")


def _slowest_imports(stderr: str, top: int) -> list[tuple[str, float]]:
    """Top-level packages by the import time spent in their own modules, from
    ``-X importtime`` (self times, so nothing is counted twice)."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+)\s+\|\s+\d+\s+\|\s*(\S+)", line)
        if match:
            package = match[2].split(".", 1)[0]
            totals[package] = totals.get(package, 0.0) + int(match[1]) / 1e6
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]


def time_import(
    label: str, python: str, paths: list[Path], env: dict[str, str], runs: int
) -> ImportTiming:
    """Median over ``runs`` fresh interpreters (``-I``: no user site, no PYTHON* variables)."""
    timing = ImportTiming(label, python)
    path_arg = os.pathsep.join(str(p) for p in paths)
    code = _TIMED_IMPORT
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(
            [python, "-I", "-c", code, path_arg],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            timing.error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            return timing
        timing.process_runs.append(time.perf_counter() - started)
        timing.runs.append(float(proc.stdout.strip().splitlines()[-1]))
    proc = subprocess.run(
        [python, "-I", "-X", "importtime", "-c", code, path_arg],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    timing.slowest = _slowest_imports(proc.stderr, 5)
    return timing


# --- sam build --------------------------------------------------------------------------------


def python313(env: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """A python3.13 for ``sam build`` (the function's runtime): on PATH, else a pyenv install
    selected with PYENV_VERSION, as tests/test_template.py finds it."""
    probe = "import sys; assert sys.version_info[:2] == (3, 13)"

    def works(executable: str, environment: dict[str, str]) -> bool:
        try:
            result = subprocess.run(
                [executable, "-c", probe],
                check=False,
                env=environment,
                capture_output=True,
                timeout=60,
            )
        except OSError:
            return False
        return result.returncode == 0

    on_path = shutil.which("python3.13", path=env.get("PATH", os.defpath))
    if on_path and works(on_path, env):
        return on_path, env
    pyenv_root = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv")
    installs = sorted(
        (
            p
            for p in pyenv_root.glob("versions/3.13.*/bin/python3.13")
            if re.fullmatch(r"3\.13\.\d+", p.parent.parent.name)
        ),
        key=lambda p: int(p.parent.parent.name.rsplit(".", 1)[1]),
        reverse=True,
    )
    for executable in installs:
        found = dict(env)
        found["PYENV_VERSION"] = executable.parent.parent.name
        found["PATH"] = os.pathsep.join(
            [str(executable.parent), str(pyenv_root / "shims"), env.get("PATH", "")]
        )
        if works(str(executable), found):
            return str(executable), found
    return None


def tree_size(root: Path) -> tuple[int, int]:
    """(bytes, files) of every regular file below ``root``."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def zipped_size(root: Path, target: Path) -> int:
    """Size of ``root`` zipped as SAM uploads it (deflate, paths relative to ``root``)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.write(path, path.relative_to(root).as_posix())
    return target.stat().st_size


@dataclass
class BuildResult:
    seconds: float = 0.0
    python: str = ""
    layer_bytes: int = 0
    layer_files: int = 0
    layer_zip_bytes: int = 0
    function_bytes: int = 0
    function_zip_bytes: int = 0
    largest_packages: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None


def sam_build(work: Path) -> BuildResult:
    """``sam build`` of a copy of the template, handler and layer into ``work``."""
    result = BuildResult()
    env = _base_environment()
    found = python313(env)
    if found is None:
        result.error = "no python3.13 on PATH or under pyenv: sam build needs the runtime's Python"
        return result
    result.python, env = found
    source = work / "src"
    source.mkdir(parents=True)
    shutil.copy2(REPO / "template.yaml", source / "template.yaml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")
    shutil.copytree(REPO / "handler", source / "handler", ignore=ignore)
    shutil.copytree(REPO / "layers", source / "layers", ignore=ignore)
    build = work / "build"
    sam = Path(sys.executable).parent / "sam"
    started = time.perf_counter()
    proc = subprocess.run(
        [
            str(sam),
            "build",
            "--template",
            str(source / "template.yaml"),
            "--build-dir",
            str(build),
            "--cache-dir",
            str(work / "cache"),
        ],
        env=env,
        cwd=source,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    result.seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        result.error = f"sam build failed: {' | '.join(tail)}"
        return result
    layer, function = build / LAYER, build / FUNCTION
    result.layer_bytes, result.layer_files = tree_size(layer)
    result.layer_zip_bytes = zipped_size(layer, work / "layer.zip")
    result.function_bytes, _ = tree_size(function)
    result.function_zip_bytes = zipped_size(function, work / "function.zip")
    site = layer / "python"
    sizes = [(p.name, tree_size(p)[0]) for p in site.iterdir() if p.is_dir()]
    result.largest_packages = sorted(sizes, key=lambda item: item[1], reverse=True)[:5]
    return result


@dataclass
class Artifact:
    imports: list[ImportTiming]
    build: BuildResult


def measure(import_runs: int, *, build: bool) -> Artifact:
    """Import timings of the source tree (this venv) and, when the build succeeds, of the
    built function and layer under the runtime's Python."""
    imports = [
        time_import(
            "handler/ in this venv, local env (tracing off)",
            sys.executable,
            [REPO / "handler"],
            _base_environment(),
            import_runs,
        ),
        time_import(
            "handler/ in this venv, Lambda env (tracing on)",
            sys.executable,
            [REPO / "handler"],
            lambda_environment(),
            import_runs,
        ),
    ]
    if not build:
        return Artifact(imports, BuildResult(error="skipped (--skip-build)"))
    with tempfile.TemporaryDirectory(prefix="orgkeypolicy-bench-") as tmp:
        built = sam_build(Path(tmp))
        if built.error is None:
            out = Path(tmp) / "build"
            imports.append(
                time_import(
                    "built function + layer, Lambda env (tracing on)",
                    built.python,
                    [out / FUNCTION, out / LAYER / "python"],
                    lambda_environment(),
                    import_runs,
                )
            )
    return Artifact(imports, built)
