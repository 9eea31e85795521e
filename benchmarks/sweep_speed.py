"""What a sweep on a local Ray cluster costs against the same points run one after another on this machine.

    python -m benchmarks.sweep_speed                   # configs/bench-iql-4x3.toml; prints its rows
    python -m benchmarks.sweep_speed --record          # rows into results/sweep_speed.csv

The grid (default 4 short IQL points x 3 seeds on the locally built halfcheetah-medium-replay; build it with
`python -m envs.build_dataset halfcheetah-medium-replay`) runs three times through `benchmarks.offline sweep`,
each in fresh run directories under a temporary folder: here one point at a time (`--backend local`), here
--ray-cpus at a time (`--jobs`), and on a Ray head started for the purpose with --ray-cpus CPU slots
(`--backend ray --jobs <slots>`, so no point waits in Ray's queue). Rows: wall time of each sweep, the mean
wall time of one point's process, and for Ray the overhead per point: the time from submitting its task to
receiving its result, less the process's own wall time. The scores of the three are compared bit for bit.
Nothing is written into results/ without --record (or --out).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import offline, sweep
from benchmarks.launch import ROOT
from rlzoo.errors import RlzooError

COLUMNS = [
    "benchmark",
    "backend",
    "points",
    "seeds_per_point",
    "steps_per_seed",
    "concurrency",
    "wall_s",
    "point_wall_mean_s",
    "overhead_per_point_s",
    "speedup_vs_sequential",
    "same_scores",
    "device",
    "commit",
    "date",
    "jax",
    "ray",
    "notes",
]


def start_ray_head(cpus: int, temp: Path) -> tuple[subprocess.Popen, str, float]:
    """A Ray head on 127.0.0.1 in its own process group (stopped by signalling that group); (process, address,
    seconds until it answered)."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={ports[0]}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        f"--temp-dir={temp}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}",
    ]
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a head of its own, not one named there
    head = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
            return head, f"127.0.0.1:{ports[0]}", time.perf_counter() - t0
        except OSError:
            if head.poll() is not None or time.perf_counter() - t0 > 120:
                raise RlzooError("the Ray head did not start; try `ray start --head` by hand to see why.") from None
            time.sleep(0.2)


def stop(head: subprocess.Popen) -> None:
    """Stop the Ray head's process group: SIGTERM, and SIGKILL to what is left after 2 s."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and head.poll() is None:
            time.sleep(0.1)
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=30)


def timed_sweep(config: str, work: Path, backend: str, jobs: int | None, address: str | None = None) -> dict:
    """Run the grid once in fresh directories; wall time, per-point process times, Ray's task timings, scores."""
    argv = (
        ["sweep", config, "--backend", backend, "--runs-root", str(work / "runs"), "--results", str(work / "results")]
        + (["--jobs", str(jobs)] if jobs else [])
        + (["--address", address] if address else [])
    )
    args = offline.parse_args(argv)
    grid = sweep.load(args.config)
    jobs_planned = sweep.plan(grid, args)
    for key in ("seed", "num_seeds", "total_steps"):
        setattr(args, key, getattr(grid, key))
    walls, seen = [], {}

    def runner(sw, pending):
        seen["sweep"] = sw
        inner = sweep.RUNNERS[backend]
        for i, job, rc, wall in inner(sw, pending):
            walls.append(wall)
            yield i, job, rc, wall

    t0 = time.perf_counter()
    if offline.run_jobs(jobs_planned, args, runner) != 0:
        raise RlzooError(f"the {backend} sweep had failed points; see the harness.log files under {work / 'runs'}")
    wall = time.perf_counter() - t0
    with (work / "results" / "scores.csv").open(newline="") as f:
        scores = sorted((r["config"], r["seed"], r["score"]) for r in csv.DictReader(f))
    return {
        "wall_s": wall,
        "walls": walls,
        "timings": getattr(seen["sweep"], "timings", []),
        "scores": scores,
        "grid": grid,
        "points": len(jobs_planned),
    }


def row(
    name: str,
    backend: str,
    out: dict,
    concurrency: int,
    sequential: dict | None,
    same: str,
    info: dict,
    ray_version: str,
    notes: list[str],
) -> dict:
    grid, timings = out["grid"], out["timings"]
    overhead = [(t["received"] - t["submitted"]) - t["wall_s"] for t in timings]
    return {
        "benchmark": name,
        "backend": backend,
        "points": out["points"],
        "seeds_per_point": grid.num_seeds,
        "steps_per_seed": grid.total_steps,
        "concurrency": concurrency,
        "wall_s": f"{out['wall_s']:.1f}",
        "point_wall_mean_s": f"{statistics.mean(out['walls']):.1f}",
        "overhead_per_point_s": f"{statistics.mean(overhead):.2f}" if overhead else "",
        "speedup_vs_sequential": f"{sequential['wall_s'] / out['wall_s']:.3f}" if sequential else "",
        "same_scores": same,
        "device": info["device"],
        "commit": info["commit"],
        "date": info["date"],
        "jax": info["jax"],
        "ray": ray_version,
        "notes": "; ".join(notes),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "bench-iql-4x3.toml"), help="the grid")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPU slots of the Ray head (points at a time)")
    p.add_argument("--record", action="store_true", help="append the rows to results/sweep_speed.csv")
    p.add_argument("--out", default="", help="CSV to append the rows to instead")
    args = p.parse_args(argv)
    if args.record:
        args.out = str(ROOT / "results" / "sweep_speed.csv")
    import ray

    from rlzoo import provenance

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as tmp:
        work = Path(tmp)
        seq = timed_sweep(args.config, work / "local-1", "local", 1)
        par = timed_sweep(args.config, work / f"local-{args.ray_cpus}", "local", args.ray_cpus)
        ray_temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths are limited
        head, address, start_s = start_ray_head(args.ray_cpus, ray_temp)
        try:
            on_ray = timed_sweep(args.config, work / "ray", "ray", args.ray_cpus, address)
        finally:
            stop(head)
            shutil.rmtree(ray_temp, ignore_errors=True)
    load_end = os.getloadavg()
    info = provenance.info()
    same = "yes" if seq["scores"] == par["scores"] == on_ray["scores"] else "no"
    common = [
        f"grid {args.config}",
        f"CPU {provenance.cpu_signature()}",
        f"{os.cpu_count()} cores",
        f"load average {load[0]:.2f} at start, {load_end[0]:.2f} at end (other work shares the machine when "
        "above the sweep's own concurrency)",
    ]
    rows = [
        row(
            "sweep_wall",
            "local",
            seq,
            1,
            None,
            same,
            info,
            ray.__version__,
            ["points one after another (--backend local --jobs 1)", *common],
        ),
        row(
            "sweep_wall",
            "local",
            par,
            args.ray_cpus,
            seq,
            same,
            info,
            ray.__version__,
            [f"{args.ray_cpus} points at a time on this machine (--backend local --jobs {args.ray_cpus})", *common],
        ),
        row(
            "sweep_wall",
            "ray",
            on_ray,
            args.ray_cpus,
            seq,
            same,
            info,
            ray.__version__,
            [
                f"local Ray head with {args.ray_cpus} CPU slots (started in {start_s:.1f} s, not counted), "
                f"--backend ray --jobs {args.ray_cpus}: no point queued inside Ray; overhead = task submit-to-result "
                "time minus the point process's wall time",
                *common,
            ],
        ),
    ]
    for r in rows:
        print(
            f"[sweep_speed] {r['backend']} x{r['concurrency']}: {r['points']} points in {r['wall_s']} s "
            f"(a point's process {r['point_wall_mean_s']} s"
            + (f", Ray overhead {r['overhead_per_point_s']} s per point" if r["overhead_per_point_s"] else "")
            + (f", {r['speedup_vs_sequential']}x one after another" if r["speedup_vs_sequential"] else "")
            + f"); same scores: {same}",
            flush=True,
        )
    if args.out:
        path = Path(args.out)
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"[sweep_speed] rows appended to {path}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except RlzooError as err:
        sys.exit("error: " + " ".join(str(err).split()))
