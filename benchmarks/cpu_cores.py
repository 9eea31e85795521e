"""Do this machine's CPUs add throughput, and what does IQL reach per core? Rows go to results/speed.csv.

    python benchmarks/cpu_cores.py                       # matmul and IQL steps, all cores of this machine
    python benchmarks/cpu_cores.py --steps matmul --seconds 5

A VM's vCPUs may be separate cores or hyperthreads of one core, and XLA's CPU backend may spread one
program over several cores even with its single-thread flag (YNNPACK's matmuls use a thread pool), so a
throughput target "on N cores" is read here from processes pinned to one core each:

- matmul: a jitted float32 1024^2 matmul, one process pinned to core 0 alone, then one process per core at
  once. If the concurrent processes keep the lone one's GFLOP/s, the vCPUs are separate cores.
- iql: `speed.py --algorithm iql` with 1 seed pinned to core 0 alone; then one such process per core at once
  (their steady calls start together, after each has compiled); then, for comparison, the ways one program
  uses all cores: 1 seed unpinned, N seeds sharded over N CPU devices, N seeds vmapped on one device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import speed  # noqa: E402  (no JAX at import: pin_cores, append_row)


def matmul_worker(core: int, seconds: float, n: int) -> float:
    """GFLOP/s of a jitted n x n float32 matmul in this process, pinned to `core`, over `seconds`."""
    speed.pin_cores(str(core))
    import jax
    import jax.numpy as jnp

    import rlzoo  # noqa: F401  (sets the single-thread CPU XLA_FLAGS, read when the backend starts)

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f(a).block_until_ready()
        calls += 1
    return 2.0 * n**3 * calls / (time.perf_counter() - t0) / 1e9


def run_matmuls(cores: list[int], seconds: float, n: int) -> list[float]:
    """Start one matmul worker per core at once; their GFLOP/s."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker-matmul", str(c), "--seconds", str(seconds),
                               "--matmul-size", str(n)], stdout=subprocess.PIPE, text=True) for c in cores]
    out = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a matmul worker failed: {out}")
    return [float(o.strip().split()[-1]) for o in out]


def append_matmul_row(out: str, value: float, core: int, concurrent: int, n: int, seconds: float) -> None:
    from rlzoo import provenance

    info = provenance.info()
    speed.append_row(Path(out), {
        "benchmark": "matmul_one_process_per_core", "algorithm": f"matmul {n}^2 float32", "device": info["device"],
        "num_seeds": "", "batch_size": "", "unit": "GFLOP/s", "value": f"{value:.2f}", "commit": info["commit"],
        "date": info["date"], "jax": info["jax"],
        "notes": f"one of {concurrent} processes run at the same time, this one pinned to core {core}; jitted "
                 f"a @ a for {seconds:g} s, XLA single-thread flags on; CPU {provenance.cpu_signature()}; "
                 f"{os.cpu_count()} cores visible"})


def launch_speed(args: argparse.Namespace, *extra: str) -> subprocess.Popen:
    """Start `speed.py --algorithm iql` with this run's --updates, --repeats and --out, plus `extra`."""
    return subprocess.Popen([sys.executable, str(SPEED), "--algorithm", "iql", "--updates", str(args.updates),
                             "--repeats", str(args.repeats), "--out", args.out, *extra])


def wait_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.wait():
            raise SystemExit(f"speed.py exited with {p.returncode}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", nargs="+", default=["matmul", "iql"], choices=["matmul", "iql"])
    p.add_argument("--seconds", type=float, default=10.0, help="matmul: seconds each process multiplies")
    p.add_argument("--matmul-size", type=int, default=1024)
    p.add_argument("--updates", type=int, default=1000, help="iql: updates per timed call")
    p.add_argument("--repeats", type=int, default=8, help="iql: timed calls per process")
    p.add_argument("--start-delay", type=float, default=45.0,
                   help="iql: seconds from launch to the concurrent processes' first steady call (covers compiling)")
    p.add_argument("--out", default=str(ROOT / "results" / "speed.csv"))
    p.add_argument("--worker-matmul", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_matmul is not None:
        print(f"{matmul_worker(args.worker_matmul, args.seconds, args.matmul_size):.3f}")
        return
    cores = sorted(os.sched_getaffinity(0))
    n = len(cores)
    if "matmul" in args.steps:
        alone = run_matmuls(cores[:1], args.seconds, args.matmul_size)
        together = run_matmuls(cores, args.seconds, args.matmul_size)
        append_matmul_row(args.out, alone[0], cores[0], 1, args.matmul_size, args.seconds)
        for c, v in zip(cores, together):
            append_matmul_row(args.out, v, c, n, args.matmul_size, args.seconds)
        print(f"[cpu_cores] matmul GFLOP/s: core {cores[0]} alone {alone[0]:.1f}; one process per core at once "
              + " + ".join(f"{v:.1f}" for v in together) + f" = {sum(together):.1f} "
              f"({sum(together) / alone[0]:.2f}x the lone core)")
    if "iql" in args.steps:
        wait_all([launch_speed(args, "--pin-cores", str(cores[0]), "--note", "alone on the machine")])
        start = time.time() + args.start_delay
        wait_all([launch_speed(args, "--pin-cores", str(c), "--start-at", f"{start:.0f}",
                        "--benchmark", "update_throughput_one_process_per_core",
                        "--note", f"one of {n} pinned single-seed processes whose steady calls started together")
                  for c in cores])
        wait_all([launch_speed(args, "--note", "unpinned: XLA may use every core")])
        wait_all([launch_speed(args, "--num-seeds", str(n), "--cpu-devices", str(n))])
        wait_all([launch_speed(args, "--num-seeds", str(n), "--note", "seeds vmapped on one CPU device, unpinned")])


if __name__ == "__main__":
    main()
