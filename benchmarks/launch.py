"""How the harnesses start a run of an algorithm file and reach an algorithm's code by its name.

A run is always its own process, `python algorithms/<name>.py ...` (the command users type), so that a
harness killed mid-sweep leaves runs that the same command resumes. Code an analysis needs (a Config,
a network) comes from the package `algorithms` by name.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from rlzoo.checkpoint import has_checkpoint
from rlzoo.errors import RlzooError

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS_DIR = ROOT / "algorithms"


def available_algorithms() -> list[str]:
    """The algorithm files' names (algorithms/<name>.py), without the package's __init__."""
    return sorted(p.stem for p in ALGORITHMS_DIR.glob("*.py") if not p.name.startswith("_"))


def algorithm_module(name: str):
    """The module algorithms.<name>; an unknown name gets one paragraph listing the files there are."""
    if name not in available_algorithms():
        raise RlzooError(
            f"unknown algorithm '{name}': there is no algorithms/{name}.py. The files in algorithms/ are: "
            f"{', '.join(p + '.py' for p in available_algorithms())}. Pass the file's name without .py."
        )
    return importlib.import_module(f"algorithms.{name}")


def run_commands(algorithm: str, run_dir: str | Path, fresh_args: list[str]) -> tuple[list[str], list[str]]:
    """(fresh start with `fresh_args`, `--resume`) command lines of algorithms/<algorithm>.py's run in `run_dir`,
    for a process that decides between them where it runs (a sweep point on another machine)."""
    cmd = [sys.executable, str(ALGORITHMS_DIR / f"{algorithm}.py")]
    return [*cmd, *fresh_args, "--run-dir", str(run_dir)], [*cmd, "--resume", str(run_dir)]


def start_or_resume_command(algorithm: str, run_dir: str | Path, fresh_args: list[str]) -> list[str]:
    """Command line of algorithms/<algorithm>.py's run in `run_dir`: `--resume` when the directory holds a
    checkpoint, else a fresh start with `fresh_args`. Running a harness again thus continues its runs."""
    fresh, resume = run_commands(algorithm, run_dir, fresh_args)
    return resume if has_checkpoint(run_dir) else fresh
