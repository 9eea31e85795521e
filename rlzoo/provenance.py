"""Who/where/when facts recorded beside every result: commit, date, device, library versions."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache
def commit() -> str:
    """This checkout's short commit, "+dirty" when tracked files outside results/ differ from it. RLZOO_COMMIT
    overrides it where the code runs from a copy without .git (a lent GPU machine gets the tree, not the repo)."""
    return os.environ.get("RLZOO_COMMIT") or checkout_commit(Path(__file__).resolve().parent)


def checkout_commit(where: Path) -> str:
    """The short commit of the git checkout holding `where`, "+dirty" when a tracked file outside results/ has
    changed: results/ is what runs write (scores.csv grows while a benchmark chain runs), not code."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=where, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], capture_output=True, text=True, cwd=where,
                               timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


@lru_cache
def cpu_signature() -> str:
    """The CPU as far as it decides float rounding: model, family/model numbers and the widest vector ISA.
    XLA compiles for the host's instruction set, so the same float32 program can round differently on
    another CPU, and a chaotic simulation (MuJoCo) then diverges; bit-exact rebuilds hold per signature."""
    fields = _cpuinfo()
    flags = set(fields.get("flags", "").split())
    isa = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), platform.machine())
    numbers = f", family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return f"{cpu_model()}{numbers}, {isa}"


def device() -> str:
    """The accelerator JAX runs on, or the CPU model and core count."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu: {cpu_model()} ({os.cpu_count()} cores)"
    return f"{dev.platform}: {dev.device_kind} x{jax.device_count()}"


def info() -> dict:
    import jax
    import jaxlib

    return {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        # what started the process: "direct" when typed, else what its launcher names itself (a sweep's backend)
        "launcher": os.environ.get("RLZOO_LAUNCHER", "direct"),
    }
