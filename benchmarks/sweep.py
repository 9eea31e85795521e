"""Sweeps: a grid of offline runs declared in a TOML file under configs/, run here, on a Ray cluster or on SLURM
by the same command with one option (`python -m benchmarks.offline sweep`; benchmarks/README.md shows it).

    python -m benchmarks.offline sweep configs/iql-expectile-beta.toml                     # here, one at a time
    python -m benchmarks.offline sweep configs/iql-expectile-beta.toml --jobs 2            # here, two at a time
    python -m benchmarks.offline sweep configs/iql-expectile-beta.toml --backend ray --address auto
    python -m benchmarks.offline sweep configs/iql-expectile-beta.toml --backend slurm --partition gpu --time-min 240

A point is one algorithm on one dataset with one value of each `[grid]` flag: one `algorithms/<algo>.py`
process with its seeds vmapped, exactly what `offline run` starts, in a run directory named by the point
(`<algo>-<dataset>-s<seed>-n<seeds>-<steps>-<flag><value>...`). Every backend runs the same command through
`sweep_task.run_point` and the driver records each finished point from its summary.json into the same
results files; the summary and the scores.csv rows name the backend and the host (`ran_on`). Re-running the
command skips finished points and resumes the others from their checkpoints. Ray and SLURM need the
repository and the runs root at the same paths on every machine (a shared filesystem).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import offline, sweep_task
from benchmarks.launch import ROOT
from rlzoo.errors import RlzooError

BACKENDS = ("local", "ray", "slurm")
REQUIRED = ("algos", "datasets", "total_steps")
KEYS = {
    "algos": "names of algorithms/<name>.py",
    "datasets": "dataset names",
    "num_seeds": "seeds per point, vmapped in its process (default 3)",
    "seed": "first seed (default 0)",
    "total_steps": "gradient steps per seed",
    "tag": "suffix of every run name (default none)",
    "flags": "table of algorithm flags every point gets",
    "grid": "table of algorithm flags, each a list of values",
}
INSTALL = "pip install -e '.[sweep]' (ray[default] and submitit)"


@dataclass
class Grid:
    """A sweep file, read and checked for its shape (its flags are checked against the algorithms later)."""

    path: Path
    algos: list[str]
    datasets: list[str]
    total_steps: int
    num_seeds: int = 3
    seed: int = 0
    tag: str = ""
    flags: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)

    def points(self) -> list[tuple[str, str, dict]]:
        """(algorithm, dataset, {flag: value}) of every point, in file order."""
        combos = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        return [(a, d, c) for a in self.algos for d in dict.fromkeys(self.datasets) for c in combos]


def load(path: str | Path) -> Grid:
    """Read and check a sweep file; bad input gets one paragraph naming the file, the key and what to write."""
    import tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        found = sorted(p.name for p in (ROOT / "configs").glob("*.toml"))
        raise RlzooError(
            f"there is no sweep file {path}; the files in configs/ are {', '.join(found) or 'none'}. "
            "Pass the path of a .toml file (see configs/README.md for its keys)."
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise RlzooError(f"{path} is not valid TOML ({err}); fix that line.") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        from rlzoo.errors import close_matches

        hint = close_matches(unknown[0], KEYS)
        close = f" (close matches: {', '.join(hint)})" if hint else ""
        keys = "; ".join(f"{k}: {v}" for k, v in KEYS.items())
        raise RlzooError(
            f"{path}: unknown key '{unknown[0]}'{close}. A sweep file has {keys}. Algorithm flags go "
            "under [flags] or [grid]."
        )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise RlzooError(
            f"{path} lacks {', '.join(missing)}; a sweep file needs algos (a list of algorithm names), "
            "datasets (a list of dataset names) and total_steps (an integer)."
        )
    for key in ("algos", "datasets"):
        if isinstance(raw[key], str):
            raw[key] = [raw[key]]
        if not raw[key] or not all(isinstance(v, str) for v in raw[key]):
            example = "iql" if key == "algos" else "hopper-medium"
            raise RlzooError(f'{path}: {key} must be a list of names, e.g. {key} = ["{example}"].')
    for key in ("total_steps", "num_seeds", "seed"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < (key != "seed")):
            raise RlzooError(
                f"{path}: {key} = {raw[key]!r} must be an integer"
                + (" of at least 0." if key == "seed" else " of at least 1.")
            )
    for table in ("flags", "grid"):
        if not isinstance(raw.get(table, {}), dict):
            raise RlzooError(f"{path}: {table} must be a table ([{table}] with one flag = value per line).")
    for name, values in raw.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise RlzooError(
                f"{path}: grid.{name} = {values!r} must be a non-empty list of the values to sweep, "
                f"e.g. {name} = [{values!r}]; a value every point shares goes under [flags]."
            )
    return Grid(path=path, **{k: v for k, v in raw.items() if k != "path"})


def flag_tokens(name: str, value) -> list[str]:
    """A TOML value as algorithm command-line tokens: true -> --name, false -> --no-name, a list -> its values."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def value_tag(name: str, value) -> str:
    """The part of a run name one grid value makes, e.g. expectile0.9, hidden_dims256x256, no-normalize_obs."""
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    text = "x".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{name}{text}")


def plan(grid: Grid, args: argparse.Namespace) -> list[offline.Job]:
    """Every point as an offline.Job, checked before anything starts (algorithms, flags, datasets, directories)."""
    from rlzoo import datasets

    for algo in grid.algos:
        offline.algorithm_module(algo)
    names = [n.replace("-", "_") for n in [*grid.flags, *grid.grid]]
    controlled = [n for n in names if n in offline.CONTROLLED]
    if controlled:
        raise RlzooError(
            f"{grid.path}: '{controlled[0]}' is set by the sweep for every point; use the file's own "
            "keys (datasets, seed, num_seeds, total_steps) instead, and only other algorithm flags under "
            "[flags] and [grid]."
        )
    fixed = [tok for name, value in grid.flags.items() for tok in flag_tokens(name, value)]
    every = fixed + [tok for name, values in grid.grid.items() for tok in flag_tokens(name, values[0])]
    try:
        offline.check_extra(grid.algos, every)
    except RlzooError as err:
        raise RlzooError(f"{grid.path}: {err}") from None
    download = grid.flags.get("download", True) is not False
    sources = {name: datasets.resolve(name, download=download).source for name in dict.fromkeys(grid.datasets)}
    root = Path(args.runs_root).expanduser()
    jobs = []
    for algo, dataset, point in grid.points():
        tag = "-".join(filter(None, [*(value_tag(k, v) for k, v in point.items()), grid.tag]))
        name = offline.run_name(algo, dataset, grid.seed, grid.num_seeds, grid.total_steps, tag)
        extra = fixed + [tok for k, v in point.items() for tok in flag_tokens(k, v)]
        jobs.append(offline.Job(algo, dataset, sources[dataset], root / name, extra))
        offline.check_same_flags(jobs[-1])
    if len({job.run_dir for job in jobs}) < len(jobs):
        raise RlzooError(f"{grid.path}: two points get the same run name; give the grid's values distinct text.")
    return jobs


# ------------------------------------------------------------------------------------------------ backends


def point_task(job: offline.Job, args: argparse.Namespace, launcher: str) -> tuple:
    """What a remote worker gets for one point: run_point's arguments (commands, run dir, cwd, environment)."""
    offline.prepare(job)
    fresh, resume = offline.commands(job, args)
    env = {**sweep_task.forwarded_env(), "RLZOO_LAUNCHER": launcher}
    return fresh, resume, str(job.run_dir), str(ROOT), env


def check_reachable(address: str) -> None:
    """A host:port address that does not answer fails in seconds here, not after Ray's minutes of retries."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address)
    if not match:
        return
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=5).close()
    except OSError as err:
        raise RlzooError(
            f"--address {address}: nothing answers there ({err}). Start the cluster first (ray start "
            "--head on its head node) and pass the address it prints: host:6379 on a node of the "
            "cluster, ray://host:10001 from outside it, or auto on a node; leave --address out to start "
            "Ray on this machine."
        ) from None


def run_on_ray(sweep: offline.Sweep, pending: list[tuple[int, offline.Job]]):
    """Each point a Ray task that asks for its device (one GPU where the cluster has GPUs, else one CPU), at most
    --jobs in flight (default: all, Ray queues them); yields (index, job, exit code, seconds) as they end."""
    args = sweep.args
    try:
        import ray
        from ray import cloudpickle
    except ImportError:
        raise RlzooError(f"--backend ray needs Ray, which is not installed here: {INSTALL}.") from None
    if args.address and args.address != "auto":
        check_reachable(args.address)
    cloudpickle.register_pickle_by_value(sweep_task)
    import logging

    try:
        ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError ... for an address it cannot use
        raise RlzooError(
            f"--backend ray could not connect to {args.address or 'a new local Ray instance'} "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]}). Start a cluster with ray start "
            "--head and pass its address (auto on one of its nodes, ray://host:10001 from outside), or "
            "leave --address out to start Ray on this machine."
        ) from None
    gpus = ray.cluster_resources().get("GPU", 0)
    remote = ray.remote(sweep_task.run_point).options(**({"num_gpus": 1} if gpus else {"num_cpus": 1}))
    print(
        f"[sweep] Ray cluster {ray.get_runtime_context().gcs_address}: {ray.cluster_resources().get('CPU', 0):g} "
        f"CPUs, {gpus:g} GPUs; each point asks for one {'GPU' if gpus else 'CPU'}",
        flush=True,
    )
    queue, running = list(pending), {}
    sweep.timings = []
    try:
        while queue or running:
            while queue and (not args.jobs or len(running) < args.jobs):
                i, job = queue.pop(0)
                sweep.announce(i, job, " on Ray")
                ref = remote.remote(*point_task(job, args, "ray"))
                running[ref] = (i, job, time.time())
            done, _ = ray.wait(list(running), num_returns=1)
            i, job, submitted = running.pop(done[0])
            try:
                out = ray.get(done[0])
            except Exception as err:  # the worker or its node died: the point failed, its checkpoints stay
                print(f"[sweep] {job.name}: the Ray task failed ({type(err).__name__}: {err})", flush=True)
                yield i, job, -1, time.time() - submitted
                continue
            sweep.timings.append({**out, "name": job.name, "submitted": submitted, "received": time.time()})
            yield i, job, out["rc"], out["wall_s"]
    except (KeyboardInterrupt, GeneratorExit):
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()


def run_on_slurm(sweep: offline.Sweep, pending: list[tuple[int, offline.Job]]):
    """The points as one SLURM job array (submitit; --partition, --time-min, --gpus-per-point, at most --jobs
    running at once); a point that times out or is preempted is requeued and resumes from its checkpoint."""
    args = sweep.args
    if args.slurm_cluster is None and shutil.which("sbatch") is None:
        raise RlzooError(
            "--backend slurm: this machine has no SLURM (no sbatch on PATH). Run the command on the "
            "cluster's login node, or add --slurm-cluster local to try the same submission here "
            "(submitit's local executor)."
        )
    try:
        import cloudpickle
        import submitit
    except ImportError:
        raise RlzooError(f"--backend slurm needs submitit, which is not installed here: {INSTALL}.") from None
    cloudpickle.register_pickle_by_value(sweep_task)
    folder = Path(args.runs_root).expanduser() / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.slurm_cluster)
    params = {"timeout_min": args.time_min, "gpus_per_node": args.gpus_per_point, "name": "rlzoo-sweep"}
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.jobs:
        params["slurm_array_parallelism"] = args.jobs
    executor.update_parameters(**params)
    for i, job in pending:
        sweep.announce(i, job, f" on {executor.cluster}")
    with executor.batch():
        submitted = [executor.submit(sweep_task.Point(*point_task(job, args, "slurm"))) for _, job in pending]
    jobs = {s.job_id: point for s, point in zip(submitted, pending)}
    print(
        f"[sweep] submitted {len(submitted)} points as {executor.cluster} jobs {', '.join(jobs)}; logs in "
        f"{folder.parent}",
        flush=True,
    )
    t0 = time.time()
    try:
        for s in submitit.helpers.as_completed(submitted, poll_frequency=2):
            i, job = jobs[s.job_id]
            try:
                out = s.result()
            except Exception as err:  # submitit raises the job's failure (timed out too often, node failure ...)
                print(
                    f"[sweep] {job.name}: its {executor.cluster} job {s.job_id} failed: "
                    f"{' '.join(str(err).split())[:400]}",
                    flush=True,
                )
                yield i, job, -1, time.time() - t0
                continue
            yield i, job, out["rc"], out["wall_s"]
    except (KeyboardInterrupt, GeneratorExit):
        for s in submitted:
            if not s.done():
                s.cancel(check=False)
        raise


RUNNERS = {"local": offline.run_locally, "ray": run_on_ray, "slurm": run_on_slurm}


def run(args: argparse.Namespace) -> int:
    """`offline sweep`: read the file, plan the points, run them with the chosen backend, record them."""
    if args.backend not in RUNNERS:
        raise RlzooError(f"unknown backend '{args.backend}'; use one of {', '.join(BACKENDS)}.")
    if args.jobs == "auto":  # as many at once as there are devices: the GPUs here, else the CPU cores
        args.jobs = (len(offline.local_gpus()) or os.cpu_count() or 1) if args.backend == "local" else None
    elif args.jobs is not None:
        raw = args.jobs
        args.jobs = int(raw) if str(raw).isdigit() else 0
        if args.jobs < 1:
            raise RlzooError(
                f"--jobs {raw}: give a number of at least 1, or auto (as many points at once as "
                "there are devices), or leave it out for the backend's default."
            )
    grid = load(args.config)
    jobs = plan(grid, args)
    for key in ("seed", "num_seeds", "total_steps"):
        setattr(args, key, getattr(grid, key))
    print(
        f"[sweep] {grid.path}: {len(jobs)} points ({', '.join(grid.algos)} × {len(dict.fromkeys(grid.datasets))} "
        f"datasets × {len(jobs) // len(grid.algos) // len(dict.fromkeys(grid.datasets))} grid values), "
        f"{grid.num_seeds} seeds each, {grid.total_steps:,} steps; backend {args.backend}; runs in "
        f"{Path(args.runs_root).expanduser()}, results in {args.results}",
        flush=True,
    )
    if args.dry_run:
        for job in jobs:
            print(f"  {job.name}: {' '.join(offline.commands(job, args)[0])}")
        return 0
    return offline.run_jobs(jobs, args, RUNNERS[args.backend])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the sweep file, e.g. configs/iql-expectile-beta.toml (keys: configs/README.md)")
    p.add_argument("--backend", default="local", help=f"where the points run: {', '.join(BACKENDS)}")
    p.add_argument(
        "--jobs",
        default=None,
        help="points running at once: a number, or auto (local: one per GPU, else per CPU core); default local 1, "
        "ray and slurm all",
    )
    p.add_argument(
        "--address",
        default=None,
        help="ray: the cluster (auto on one of its nodes, host:6379, ray://host:10001); default: start "
        "Ray on this machine",
    )
    p.add_argument("--partition", default=None, help="slurm: the partition")
    p.add_argument(
        "--time-min",
        type=int,
        default=240,
        help="slurm: time limit per point in minutes (a point cut off is requeued and resumes)",
    )
    p.add_argument("--gpus-per-point", type=int, default=1, help="slurm: GPUs per point")
    p.add_argument(
        "--slurm-cluster",
        default=None,
        help="slurm: submitit's executor; 'local' runs the submission path on this machine",
    )
    p.add_argument("--wandb", action="store_true", help="log to W&B: each point a group, each seed a run in it")
    p.add_argument("--dry-run", action="store_true", help="list the points and their commands; run nothing")
    p.add_argument("--runs-root", default="~/rlzoo-runs/offline", help="where run directories go")
    p.add_argument("--results", default=str(ROOT / "results"), help="results folder (scores.csv, curves/)")
