"""One run of a sweep, on whichever machine executes it: the algorithm's process, its log, and where it ran.

Standard library only: Ray and submitit ship this module to their workers by value (cloudpickle), so a
worker needs Python and the repository's files at the same path (a shared filesystem), not this package on
its import path. The local backend runs the same function, so every backend runs the same command.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Prefixes of the environment variables a point's process gets from the sweep's driver (on Ray, whose workers
# have their own environment): what decides what a run computes, where its data is and how it logs.
FORWARDED = ("RLZOO_", "JAX_", "XLA_", "MINARI_", "WANDB_", "MUJOCO_GL", "PYTHONPATH")

# Runs the command in place of itself after asking Linux to kill it when its parent (the Ray worker, the
# submitit job, the harness) dies: a driver killed half-way leaves no orphan that still holds its run directory.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(137); os.execv(sys.argv[2], sys.argv[2:])"
)


def forwarded_env(environ: dict | None = None) -> dict[str, str]:
    """The driver's variables that a point's process must see wherever it runs (`FORWARDED`)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED)}


def has_checkpoint(run_dir: Path) -> bool:
    """rlzoo.checkpoint.has_checkpoint's test, here without importing JAX."""
    d = Path(run_dir) / "checkpoints"
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def run_point(fresh: list[str], resume: list[str], run_dir: str, cwd: str, env: dict[str, str]) -> dict:
    """Run the point's algorithm process to its end: `resume` if its directory holds a checkpoint (decided here,
    so that a requeued or retried point continues), else `fresh`; output appended to <run dir>/harness.log.
    Returns exit code, seconds, host and start/end times (epoch seconds)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = resume if has_checkpoint(run_dir) else fresh
    host = socket.gethostname()
    guarded = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd] if sys.platform == "linux" else cmd
    start = time.time()
    t0 = time.perf_counter()
    with (run_dir / "harness.log").open("a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {host}: {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(guarded, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **env})
    rc = proc.returncode
    return {"rc": rc, "wall_s": time.perf_counter() - t0, "host": host, "start": start, "end": time.time()}


class Point:
    """A sweep point as submitit runs it: calling it runs the point; `checkpoint` (submitit's hook on a timeout
    or preemption) requeues the same call, which then resumes from the run's newest checkpoint."""

    def __init__(self, fresh: list[str], resume: list[str], run_dir: str, cwd: str, env: dict[str, str]):
        self.args = (fresh, resume, run_dir, cwd, env)

    def __call__(self) -> dict:
        return run_point(*self.args)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(Point(*self.args))
