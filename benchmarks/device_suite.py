"""Every GPU figure of the open issues in one call of a short device lease, in priority order, within a deadline.

    python benchmarks/device_suite.py --out "$OUT" --deadline-s 530            # on the lent GPU machine
    python benchmarks/device_suite.py --out /tmp/suite --deadline-s 120 --quick # rehearsal on the CPU

First the update throughput of each algorithm (`benchmarks/speed.py`, in this one process so that JAX and the
GPU start once): IQL, TD3+BC and CQL with 1 and 10 vmapped seeds, SAC with 1, PQN on Breakout-MinAtar with 1
and 10, PQN on Atari Breakout (ale-py inside the jit, then stepped from the host). Rows go to <out>/speed.csv,
in results/speed.csv's schema.
Then, with whatever time is left, PQN's paper-length MinAtar runs (`benchmarks/minatar.py run`, 10 seeds,
1e7 steps) under their own names (--tag, e.g. gpu-h200), stopped at the deadline; an unfinished run keeps its
checkpoint in --runs-root and resumes on the next call while the machine is still held. Curves, new
results/scores.csv rows and the run logs are packed into <out>/minatar.tgz.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
# JAX takes 75% of GPU memory per process by default; this process keeps its share while the MinAtar runs go on
# in child processes, so every process here allocates as it needs instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def elapsed() -> float:
    return time.monotonic() - T0


def speed_runs(quick: bool) -> list[list[str]]:
    """(arguments of benchmarks/speed.py), most wanted first. --quick: tiny sizes for a CPU rehearsal."""
    k = 0.01 if quick else 1.0

    def n(x: int) -> str:
        return str(max(int(x * k), 2))

    return [
        ["--algorithm", "iql", "--num-seeds", "1", "--updates", n(20_000)],
        ["--algorithm", "iql", "--num-seeds", "10", "--updates", n(10_000)],
        ["--algorithm", "td3_bc", "--num-seeds", "1", "--updates", n(20_000)],
        ["--algorithm", "cql", "--num-seeds", "1", "--updates", n(4_000)],
        ["--algorithm", "pqn", "--num-seeds", "1", "--updates", n(100)],
        ["--algorithm", "pqn", "--num-seeds", "10", "--updates", n(100)],
        ["--algorithm", "td3_bc", "--num-seeds", "10", "--updates", n(10_000)],
        ["--algorithm", "cql", "--num-seeds", "10", "--updates", n(2_000)],
        ["--algorithm", "sac", "--num-seeds", "1", "--updates", n(10_000)]
        + (["--replay-capacity", "10000"] if quick else []),
        ["--algorithm", "pqn", "--env", "Breakout", "--num-seeds", "1", "--updates", "2" if quick else "10"],
        ["--algorithm", "pqn", "--env", "Breakout", "--num-seeds", "1", "--updates", "2" if quick else "10",
         "--no-atari-xla"],
    ]


def run_speed(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    out = Path(args.out) / "speed.csv"
    for argv in speed_runs(args.quick):
        if elapsed() > args.speed_budget_s:
            print(f"[suite] speed budget spent at {elapsed():.0f} s; skipped {' '.join(argv)}", flush=True)
            continue
        t = time.monotonic()
        try:
            speed.main([*argv, "--repeats", "3", "--out", str(out), "--matmul-size", str(args.matmul_size)])
        except BaseException:  # one failed figure must not cost the others: log it and go on
            traceback.print_exc()
            print(f"[suite] FAILED: {' '.join(argv)}", flush=True)
        print(f"[suite] {' '.join(argv)}: {time.monotonic() - t:.0f} s (at {elapsed():.0f} s)", flush=True)


def run_minatar(args) -> None:
    scores = ROOT / "results" / "scores.csv"
    before = len(scores.read_text().splitlines()) if scores.exists() else 0
    common = ["--num-seeds", str(args.num_seeds), "--eval-every", str(args.eval_every), "--runs-root",
              args.runs_root, "--tag", args.tag, *(["--total-steps", "163840", "--eval-every", "81920"]
                                                   if args.quick else [])]
    left = args.deadline_s - elapsed() - 25  # keep time to pack the results
    if left > 60:
        print(f"[suite] MinAtar runs {args.games} for at most {left:.0f} s", flush=True)
        with open(Path(args.out) / "minatar.log", "a") as log:
            proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "minatar.py"), "run", "--games",
                                     *args.games, *common], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # minatar.py and its pqn.py child
                proc.wait()
                print(f"[suite] MinAtar stopped at the deadline ({elapsed():.0f} s)", flush=True)
    else:
        print(f"[suite] no time left for MinAtar runs ({elapsed():.0f} s)", flush=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "minatar.py"), "collect", *common], cwd=ROOT)
    new_rows = scores.read_text().splitlines()[before:] if scores.exists() else []
    (Path(args.out) / "scores-new.csv").write_text("".join(r + "\n" for r in new_rows))
    runs = Path(args.runs_root).expanduser()
    with tarfile.open(Path(args.out) / "minatar.tgz", "w:gz") as tar:
        for f in sorted((ROOT / "results" / "curves").glob(f"pqn-*{args.tag}*")):
            tar.add(f, arcname=f"curves/{f.name}")
        for d in sorted(runs.glob(f"pqn-*{args.tag}")):
            for name in ("eval.csv", "summary.json", "config.json", "train.csv"):
                if (d / name).exists():
                    tar.add(d / name, arcname=f"runs/{d.name}/{name}")


def device_tag() -> str:
    """'gpu-h200' for an NVIDIA H200, 'cpu' on a CPU: names the MinAtar runs of this device."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return "cpu"
    words = [w for w in dev.device_kind.lower().split() if w not in ("nvidia", "tesla")] or ["unknown"]
    return f"{dev.platform}-" + "".join(c for c in words[0] if c.isalnum())  # "NVIDIA H100 80GB HBM3" -> gpu-h100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for speed.csv, minatar.tgz and logs")
    p.add_argument("--deadline-s", type=float, default=530, help="seconds from start by which everything ends")
    p.add_argument("--speed-budget-s", type=float, default=260, help="no new speed figure starts after this")
    p.add_argument("--matmul-size", type=int, default=8192, help="n of speed.py's reference n x n matmul")
    p.add_argument("--games", nargs="+", default=["Asterix-MinAtar", "Freeway-MinAtar"])
    p.add_argument("--num-seeds", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=491_520)
    p.add_argument("--runs-root", default="/tmp/rlzoo-device-runs")
    p.add_argument("--tag", default="", help="MinAtar run names' tag (default: the device, e.g. gpu-h200)")
    p.add_argument("--skip-speed", action="store_true", help="only the MinAtar runs (a second call)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: rehearse the whole suite on a CPU")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.tag = args.tag or device_tag()
    if not args.skip_speed:
        run_speed(args)
    run_minatar(args)
    print(f"[suite] done at {elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
