"""Create (once) the separate virtualenv that holds MLflow, the baseline our figures are compared to.

MLflow is not a project dependency: it lives in var/bench-mlflow-venv, and the baseline
script runs inside it as a subprocess. `python bench/mlflow_env.py` builds it; the bench
scripts call `ensure_mlflow_venv()` and build it on first use unless told not to.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VENV_DIR = BASE_DIR / "var" / "bench-mlflow-venv"
# Pinned so that a figure compares against the same MLflow from run to run (3.18.0 needs an
# mlflow-skinny that the package index here does not offer yet).
MLFLOW_REQUIREMENT = "mlflow==3.17.2"
# Installing MLflow and its dependencies takes a minute or two; more means something hangs.
INSTALL_TIMEOUT_SECONDS = 900


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    """Return the python executable of the MLflow venv."""
    return venv_dir / "bin" / "python"


def mlflow_installed(venv_dir: Path = VENV_DIR) -> bool:
    """Return True when the venv exists and imports the pinned MLflow."""
    python = venv_python(venv_dir)
    if not python.exists():
        return False
    wanted = MLFLOW_REQUIREMENT.split("==", 1)[1]
    probe = subprocess.run(
        [str(python), "-c", "import mlflow, sys; sys.stdout.write(mlflow.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip() == wanted


def ensure_mlflow_venv(*, venv_dir: Path = VENV_DIR, quiet: bool = True) -> Path:
    """Create the venv and install the pinned MLflow unless already there; return its python."""
    if mlflow_installed(venv_dir):
        return venv_python(venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    if not venv_python(venv_dir).exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    pip = [str(venv_python(venv_dir)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    subprocess.run([*pip, MLFLOW_REQUIREMENT], check=True, timeout=INSTALL_TIMEOUT_SECONDS)
    if not mlflow_installed(venv_dir):
        raise RuntimeError(f"{MLFLOW_REQUIREMENT} did not import from {venv_dir} after installing it")
    return venv_python(venv_dir)


def main() -> None:
    """Build the MLflow venv and print where its python is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args()
    python = ensure_mlflow_venv(quiet=not args.verbose)
    sys.stdout.write(f"{python}\n")


if __name__ == "__main__":
    main()
