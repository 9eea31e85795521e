"""The run directory: created for a new run, reopened by --resume (with its saved hyperparameters), and held
by one process at a time."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import time
from pathlib import Path

from rlzoo.checkpoint import has_checkpoint
from rlzoo.errors import RlzooError
from rlzoo.options import HOST_OPTIONS


def reopen(config, algorithm: str):
    """(config with the saved hyperparameters, run dir) of the run `config.resume` names, refused if it has no
    checkpoint, has finished, or belongs to another algorithm."""
    run_dir = Path(config.resume)
    if not has_checkpoint(run_dir):
        raise RlzooError(
            f"--resume {config.resume}: no checkpoint found in {run_dir.resolve()}/checkpoints. Point --resume at "
            "the run directory printed at the start of an earlier run, or start a new run without --resume."
        )
    done = run_dir / "summary.json"
    if done.is_file():
        raise RlzooError(
            f"--resume {config.resume}: that run has finished (its final scores are in {done}); resuming it would "
            "only record the same scores a second time. Start a new run without --resume to train again."
        )
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise RlzooError(f"--resume {config.resume}: its config.json cannot be read ({err}), so the run's "
                         "hyperparameters are unknown. Start a new run without --resume.") from None
    other = saved.get("algorithm", "unknown")
    if other != algorithm:
        raise RlzooError(
            f"--resume {config.resume}: that directory holds a {other} run, not {algorithm}. Resume it with the "
            f"{other} algorithm's own file (its --resume {config.resume}), or point --resume at a {algorithm} run "
            "directory."
        )
    fields = {f.name for f in dataclasses.fields(config)}
    # Hyperparameters come from the saved config; how this invocation reports comes from the command line.
    keep = HOST_OPTIONS - {"run_dir"}  # the run directory is the saved one
    config = dataclasses.replace(config, **{k: v for k, v in saved.items() if k in fields and k not in keep})
    return dataclasses.replace(config, resume=str(run_dir)), run_dir


def new_path(config, algorithm: str) -> Path:
    """--run-dir, else runs/<algorithm>-<env>-<time>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(config.run_dir or f"runs/{algorithm}-{config.env.replace('/', '_')}-{stamp}")


def create(run_dir: Path, config, algorithm: str) -> None:
    """Make the directory and record the hyperparameters (config.json) beside the algorithm's name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    hold(run_dir)
    (run_dir / "config.json").write_text(json.dumps({**dataclasses.asdict(config), "algorithm": algorithm},
                                                    indent=2))


def process_alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def hold(run_dir: Path) -> None:
    """One process per run directory: a second one (a sweep or launch repeated while the first still runs)
    would interleave checkpoints and CSV rows. The claim, run.pid, is dropped when the process exits; one
    left by a killed process names a dead pid and is taken over."""
    lock = Path(run_dir) / "run.pid"
    try:
        holder = int(lock.read_text().strip())
    except (OSError, ValueError):
        holder = None
    if holder is not None and holder != os.getpid() and process_alive(holder):
        raise RlzooError(
            f"{run_dir} is in use by process {holder}, which is still running it. Wait for that process to "
            f"finish (or stop it: kill {holder}) before resuming; two processes in one run directory would "
            "overwrite each other's checkpoints."
        )
    lock.write_text(str(os.getpid()))

    def release() -> None:
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except OSError:
            pass

    atexit.register(release)
