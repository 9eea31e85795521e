"""Offline benchmark harness: algorithms x datasets x seeds, recorded in results/, then a report.

    # IQL on nine D4RL-style datasets, 3 seeds, 200k gradient steps (one process per dataset, seeds vmapped)
    python -m benchmarks.offline run --algos iql \\
        --datasets halfcheetah-medium hopper-medium walker2d-medium \\
                   halfcheetah-medium-replay hopper-medium-replay walker2d-medium-replay \\
                   halfcheetah-medium-expert hopper-medium-expert walker2d-medium-expert \\
        --num-seeds 3 --total-steps 200000
    # TD3+BC and CQL on the same datasets. CQL's update is ~25x IQL's arithmetic (13.7 GFLOP): ~6.6 updates/s on
    # the project's 2-core CPU, i.e. ~25 h per dataset for 3 seeds x 200k steps there; plan it for a GPU.
    python -m benchmarks.offline run --algos td3_bc cql --datasets <the nine above> --num-seeds 3 --total-steps 200000
    # flags after `--` go to every algorithm process unchanged
    python -m benchmarks.offline run --algos iql td3_bc --datasets hopper-medium -- --eval-every 10000
    python -m benchmarks.offline run ... --jobs 2        # two runs at a time (one CPU core each)
    # a grid from a file under configs/, here, on a Ray cluster or on SLURM (benchmarks/sweep.py)
    python -m benchmarks.offline sweep configs/iql-expectile-beta.toml --backend ray --address auto
    # table, learning curves and rliable aggregates from results/scores.csv (benchmarks/offline_report.py)
    python -m benchmarks.offline report

`run` starts one `algorithms/<algo>.py --env <dataset> --num-seeds N --seed S --total-steps K`
process per (algorithm, dataset): any algorithm file with those flags works, by its name. Each run
lives in <runs-root>/<algo>-<dataset>-s<S>-n<N>-<K>[-<tag>]/ (log in harness.log there). Re-running
the same command skips finished runs (they have summary.json), resumes unfinished ones from their
newest checkpoint (--resume), and starts the rest. Each finished run is recorded once, from its
summary.json after its process has exited: one row per seed in <results>/scores.csv (final normalized
score, steps, wall time, device, commit, date, jax) and its evaluation curve in <results>/curves/<run
name>/ (benchmarks/record_run.py). `report` is benchmarks/offline_report.py; its docstring says what
it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import offline_report
from benchmarks.launch import ROOT, algorithm_module, run_commands
from benchmarks.record_run import already_recorded, record, short_steps
from benchmarks.sweep_task import run_point
from rlzoo.checkpoint import has_checkpoint
from rlzoo.errors import RlzooError

# Options the harness sets itself for every run; they may not be passed after `--`.
CONTROLLED = {"env", "seed", "num_seeds", "total_steps", "run_dir", "resume"}


# ------------------------------------------------------------------------------------------------ run


@dataclass
class Job:
    algo: str
    dataset: str
    source: str
    run_dir: Path
    extra: list[str]

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").exists()

    @property
    def resumable(self) -> bool:
        return has_checkpoint(self.run_dir)


def run_name(algo: str, dataset: str, seed: int, num_seeds: int, steps: int, tag: str = "") -> str:
    name = f"{algo}-{dataset.strip('/').replace('/', '_')}-s{seed}-n{num_seeds}-{short_steps(steps)}"
    return f"{name}-{tag}" if tag else name


def algorithm_config(algo: str) -> type:
    """The tyro Config dataclass of algorithms/<algo>.py."""
    return algorithm_module(algo).Config


def algorithm_flags(algo: str) -> set[str]:
    """The --flags of algorithms/<algo>.py, read from its tyro Config dataclass."""
    import dataclasses

    flags = set()
    for f in dataclasses.fields(algorithm_config(algo)):
        flags.add(f.name.replace("_", "-"))
        if f.type in (bool, "bool"):
            flags.add("no-" + f.name.replace("_", "-"))
    return flags


def check_extra(algos: list[str], extra: list[str]) -> None:
    """Flags after `--` must exist in every algorithm and must not be ones the harness sets."""
    names = [tok[2:].split("=", 1)[0] for tok in extra if tok.startswith("--")]
    controlled = [n for n in names if n.replace("-", "_") in CONTROLLED]
    if controlled:
        raise RlzooError(
            f"--{controlled[0]} is set by the harness for every run; use its own options instead (--datasets, "
            "--seed, --num-seeds, --total-steps, --runs-root, --results), and pass only other algorithm flags "
            "after `--`."
        )
    for algo in algos if names else []:
        flags = algorithm_flags(algo)
        unknown = [n for n in names if n not in flags and n.replace("_", "-") not in flags]
        if unknown:
            from rlzoo.errors import close_matches

            hint = close_matches(unknown[0], flags)
            raise RlzooError(
                f"algorithms/{algo}.py has no flag --{unknown[0]}"
                + (f" (close matches: {', '.join('--' + h for h in hint)})" if hint else "")
                + f"; see python algorithms/{algo}.py --help for its flags."
            )


def plan(args: argparse.Namespace) -> list[Job]:
    """Check every algorithm, dataset and flag before anything starts; return the runs in sweep order."""
    from rlzoo import datasets

    for algo in args.algos:
        algorithm_module(algo)  # an unknown name is refused here, with the files there are
    if args.num_seeds < 1 or args.total_steps < 1 or args.jobs < 1:
        raise RlzooError("--num-seeds, --total-steps and --jobs must be at least 1")
    check_extra(args.algos, args.extra)
    download = "--no-download" not in args.extra
    sources = {name: datasets.resolve(name, download=download).source for name in dict.fromkeys(args.datasets)}
    root = Path(args.runs_root).expanduser()
    jobs = []
    for algo in args.algos:
        for dataset in dict.fromkeys(args.datasets):
            name = run_name(algo, dataset, args.seed, args.num_seeds, args.total_steps, args.tag)
            jobs.append(Job(algo, dataset, sources[dataset], root / name, list(args.extra)))
            check_same_flags(jobs[-1])
    return jobs


def check_same_flags(job: Job) -> None:
    """A run directory started with other algorithm flags is not resumed or skipped as if it were this one."""
    saved = job.run_dir / "harness.json"
    if saved.exists() and json.loads(saved.read_text())["extra"] != job.extra:
        raise RlzooError(
            f"{job.run_dir} was started with the algorithm flags {json.loads(saved.read_text())['extra']} "
            f"but this sweep passes {job.extra}; resuming or skipping it would mix two configurations. "
            "Give this sweep its own --tag (or --runs-root), or repeat the original flags."
        )


def commands(job: Job, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The algorithm process of one run: (fresh start, --resume of an interrupted one); whoever runs it picks."""
    fresh = ["--env", job.dataset, "--seed", str(args.seed), "--num-seeds", str(args.num_seeds),
             "--total-steps", str(args.total_steps)]
    tail = ["--quiet", *job.extra] + (["--wandb"] if getattr(args, "wandb", False) else [])
    start, resume = run_commands(job.algo, job.run_dir, fresh)
    return start + tail, resume + tail


def prepare(job: Job) -> None:
    """The run directory with the harness's record of the flags it was started with (harness.json)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    saved = job.run_dir / "harness.json"
    if not saved.exists():
        saved.write_text(json.dumps({"algorithm": job.algo, "dataset": job.dataset, "extra": job.extra}, indent=2))


def execute(job: Job, args: argparse.Namespace, env: dict | None = None) -> tuple[int, float]:
    """Run one algorithm process here, its output appended to <run dir>/harness.log (sweep_task.run_point, what
    every sweep backend runs), with `env` added to its environment; its summary names this host."""
    prepare(job)
    out = run_point(*commands(job, args), str(job.run_dir), str(ROOT), {"RLZOO_LAUNCHER": "local", **(env or {})})
    return out["rc"], out["wall_s"]


def local_gpus() -> list[str]:
    """The GPUs processes started here may use, found without starting JAX in this process (which would take GPU
    memory): CUDA_VISIBLE_DEVICES when set, else the GPUs `nvidia-smi -L` lists; [] without any."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def log_tail(job: Job, lines: int = 12) -> str:
    path = job.run_dir / "harness.log"
    text = path.read_text(errors="replace").rstrip().splitlines() if path.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def report_scores(job: Job) -> str:
    summary = json.loads((job.run_dir / "summary.json").read_text())
    scores = {int(s): v for s, v in summary["final_scores"].items()}
    values = np.array(list(scores.values()))
    per_seed = ", ".join(f"seed {s} {v:.1f}" for s, v in sorted(scores.items()))
    return (
        f"{per_seed}; mean {values.mean():.1f} ± {values.std():.1f} ({summary['steps']:,} steps, "
        f"{summary['wall_s']:.0f} s of training)"
    )


class Sweep:
    """The runs of one `run` command and its progress lines: finished runs are recorded (once) and counted."""

    def __init__(self, jobs: list[Job], args: argparse.Namespace):
        self.jobs, self.args = jobs, args
        results = Path(args.results)
        self.scores_csv, self.curves = results / "scores.csv", results / "curves"
        self.done, self.failed = 0, []

    def recorded(self, i: int, job: Job, quiet: bool = False) -> None:
        """Record a finished run unless it is already in scores.csv, and print its final scores."""
        summary = json.loads((job.run_dir / "summary.json").read_text())
        if not already_recorded(self.scores_csv, summary):
            record(job.run_dir, self.scores_csv, self.curves)
        prefix = "  " if quiet else f"[{i}/{len(self.jobs)}] {job.name}: "
        print(f"{prefix}final scores: {report_scores(job)}", flush=True)
        self.done += 1

    def announce(self, i: int, job: Job, where: str = "") -> None:
        how = "resuming from its newest checkpoint" if job.resumable else "starting"
        print(f"[{i}/{len(self.jobs)}] {job.algo} on {job.dataset} ({job.source} data): {how}{where}; "
              f"log {job.run_dir}/harness.log", flush=True)

    def start(self, i: int, job: Job, gpus: queue.Queue | None = None) -> tuple[int, float]:
        """Run one algorithm process (fresh or resumed) to its end, here; with `gpus`, on one GPU taken from it
        (CUDA_VISIBLE_DEVICES) and put back after."""
        if gpus is None:
            self.announce(i, job)
            return execute(job, self.args)
        gpu = gpus.get()
        try:
            self.announce(i, job, f" on GPU {gpu}")
            return execute(job, self.args, {"CUDA_VISIBLE_DEVICES": gpu})
        finally:
            gpus.put(gpu)

    def ended(self, i: int, job: Job, rc: int, wall: float) -> None:
        """Record a run whose process exited cleanly with its summary, or report it failed."""
        if rc == 0 and job.finished:
            self.recorded(i, job)
            return
        self.failed.append(job)
        print(f"[{i}/{len(self.jobs)}] {job.name}: FAILED (exit {rc}) after {wall:.0f} s; the end of its log:\n"
              f"{log_tail(job)}", flush=True)


def run_locally(sweep: Sweep, pending: list[tuple[int, Job]]):
    """(index, job, exit code, seconds) of each pending run as it ends, --jobs of them at a time on this machine;
    with several at a time and GPUs here, each run gets a GPU of its own (at most one run per GPU)."""
    workers, gpus = sweep.args.jobs or 1, None
    found = local_gpus() if workers > 1 else []
    if found:
        gpus = queue.Queue()
        for gpu in found:
            gpus.put(gpu)
        if workers > len(found):
            print(f"[offline] --jobs {workers} on {len(found)} GPUs: {len(found)} runs at a time, one per GPU")
            workers = len(found)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(sweep.start, i, job, gpus): (i, job) for i, job in pending}
        for future in as_completed(futures):
            yield (*futures[future], *future.result())
    except KeyboardInterrupt:
        # Ctrl-C reaches the running algorithm processes too (they keep their checkpoints); start no queued run.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def run_jobs(jobs: list[Job], args: argparse.Namespace, runner=run_locally) -> int:
    """Record the finished runs, have `runner(sweep, pending)` run the others, record each as it ends."""
    sweep = Sweep(jobs, args)
    pending = []
    for i, job in enumerate(jobs, 1):
        if job.finished:
            summary = json.loads((job.run_dir / "summary.json").read_text())
            state = "already recorded" if already_recorded(sweep.scores_csv, summary) else "recording it now"
            print(f"[{i}/{len(jobs)}] {job.name}: finished earlier ({state})")
            sweep.recorded(i, job, quiet=True)
        else:
            pending.append((i, job))
    for i, job, rc, wall in runner(sweep, pending) if pending else ():
        sweep.ended(i, job, rc, wall)
    failed = sweep.failed
    print(
        f"[offline] {sweep.done} of {len(jobs)} runs finished and recorded in {sweep.scores_csv}"
        + (f"; {len(failed)} failed: {', '.join(j.name for j in failed)} (re-run the same command to resume)"
           if failed else "")
        + f". Report: python -m benchmarks.offline report --results {args.results}"
    )
    return 1 if failed else 0


def run_sweep(args: argparse.Namespace) -> int:
    jobs = plan(args)
    print(
        f"[offline] {len(jobs)} runs: {', '.join(args.algos)} × {len(jobs) // len(args.algos)} datasets, seeds "
        f"{args.seed}..{args.seed + args.num_seeds - 1} (vmapped), {args.total_steps:,} steps; runs in "
        f"{Path(args.runs_root).expanduser()}, results in {args.results}"
    )
    return run_jobs(jobs, args)


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="run (or resume) a sweep and record it in results/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Flags after `--` go to every algorithm process unchanged, e.g. `... -- --eval-every 10000 --chunk "
        "1000`. Re-run the same command to resume an interrupted sweep. Examples: python -m benchmarks.offline --help",
    )
    r.add_argument("--algos", nargs="+", default=["iql"], help="names of algorithms/<name>.py")
    r.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        help="dataset names (D4RL-style aliases such as hopper-medium-replay, Minari ids or paths)",
    )
    r.add_argument("--num-seeds", type=int, default=3, help="seeds per run, trained together (vmapped)")
    r.add_argument("--seed", type=int, default=0, help="first seed")
    r.add_argument("--total-steps", type=int, default=1_000_000, help="gradient steps per seed")
    r.add_argument("--jobs", type=int, default=1, help="runs at a time")
    r.add_argument("--tag", default="", help="suffix of the run names, for sweeps with other algorithm flags")
    r.add_argument("--runs-root", default="~/rlzoo-runs/offline", help="where run directories go")
    r.add_argument("--results", default=str(ROOT / "results"), help="results folder (scores.csv, curves/)")
    from benchmarks import sweep

    sweep.add_arguments(sub.add_parser(
        "sweep",
        help="run (or resume) a grid from a configs/*.toml file here, on Ray or on SLURM, and record it (sweep.py)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=sweep.__doc__.split("\n\n")[0],
    ))
    offline_report.add_arguments(sub.add_parser(
        "report",
        help="table, learning curves and aggregate plots from results/scores.csv (benchmarks/offline_report.py)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    ))
    args = parser.parse_args(argv)
    if extra and args.command != "run":
        parser.error("flags after `--` are passed to the algorithms and only make sense with `run` (a sweep takes "
                     "them from its file's [flags])")
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "sweep":
            from benchmarks import sweep

            return sweep.run(args)
        return run_sweep(args) if args.command == "run" else offline_report.report(args)
    except RlzooError as err:
        print(
            "\nerror: "
            + textwrap.fill(
                str(err), width=100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
            ),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the unfinished runs", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
