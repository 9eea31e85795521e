"""SAC learning check on Gymnasium MuJoCo v5: launch long runs, then collect their curves into results/.

    python -m benchmarks.online launch --envs HalfCheetah-v5 Hopper-v5 --runs-root ~/rlzoo-runs
    python -m benchmarks.online collect --runs-root ~/rlzoo-runs

`launch` starts one background process per env (one CPU core each, XLA intra-op threading off),
each a plain `algorithms/sac.py` run with checkpoints, logging to <runs-root>/<name>.log; an
interrupted run is continued with `launch` again (it resumes from the newest checkpoint).
`collect` copies each run's eval.csv into results/curves/<name>.csv, plots every run into
results/curves/<name>.png, records each finished run once (benchmarks/record_run.py: its final return
in results/scores.csv, its curve files in results/curves/<name>-<steps>/, e.g. sac-Ant-v5-s0-1M), and
lists runs that have not finished yet in results/curves/in_progress.csv (steps reached, latest return)
so that partial curves are never mistaken for final numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.launch import ROOT, start_or_resume_command
from benchmarks.record_run import record, short_steps

CURVES = ROOT / "results" / "curves"


def run_name(env: str, seed: int) -> str:
    return f"sac-{env}-s{seed}"


def launch(args) -> None:
    from rlzoo.envs import check_env_id
    from rlzoo.errors import RlzooError

    for env in args.envs:  # refused here, not in a background log the user may never read
        try:
            check_env_id(env)
        except RlzooError as err:
            raise SystemExit(f"error: {err}") from None
    root = Path(args.runs_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for env in args.envs:
        name = run_name(env, args.seed)
        run_dir = root / name
        if (run_dir / "summary.json").exists():  # launching it again would record its scores a second time
            print(f"{name} has finished already ({run_dir / 'summary.json'}); not started")
            continue
        saved = run_dir / "config.json"
        steps = json.loads(saved.read_text()).get("total_steps") if saved.exists() else args.total_steps
        if steps != args.total_steps:
            raise SystemExit(f"error: {run_dir} is a run of {steps:,} steps, not "
                             f"--total-steps {args.total_steps:,}; resuming keeps its own length. Use that length, "
                             "or another --runs-root for a run of this one.")
        cmd = start_or_resume_command("sac", run_dir, [
            "--env", env, "--seed", str(args.seed), "--total-steps", str(args.total_steps), "--eval-every", "10000",
            "--checkpoint-every", "20000", "--save-policy-every", "10000"])
        # How a run reports is not part of its saved configuration: say it again when resuming. Its scores are
        # recorded by `collect` (with the curve files the row points at), not by the run itself.
        cmd += ["--quiet"]
        log = open(root / f"{name}.log", "a")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        print(f"started {name} (pid {proc.pid}): {' '.join(cmd)}")


def collect(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(args.runs_root).expanduser()
    CURVES.mkdir(parents=True, exist_ok=True)
    progress = []
    for run_dir in sorted(p for p in root.glob("sac-*") if (p / "eval.csv").exists()):
        name = run_dir.name
        shutil.copy(run_dir / "eval.csv", CURVES / f"{name}.csv")
        data = np.atleast_1d(np.genfromtxt(run_dir / "eval.csv", delimiter=",", names=True))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(data["step"], data["return_mean"])
        ax.fill_between(data["step"], data["return_mean"] - data["return_std"],
                        data["return_mean"] + data["return_std"], alpha=0.2)
        done = (run_dir / "summary.json").exists()
        ax.set_title(f"{name}" + ("" if done else f" (in progress: {int(data['step'][-1]):,} steps)"))
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return (10 episodes, mean action)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(CURVES / f"{name}.png", dpi=110)
        plt.close(fig)
        if done:
            steps = json.loads((run_dir / "summary.json").read_text())["steps"]
            record(run_dir, Path(args.scores_csv), CURVES, name=f"{name}-{short_steps(steps)}")
        else:
            progress.append([name, int(data["step"][-1]), round(float(data["return_mean"][-1]), 1)])
        print(f"{name}: {int(data['step'][-1]):,} steps, latest return {data['return_mean'][-1]:.0f}"
              + ("" if done else " (in progress)"))
    with (CURVES / "in_progress.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "steps_reached", "latest_return"])
        writer.writerows(progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="start (or resume) one background SAC run per env")
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, default=1_000_000)
    p.add_argument("--runs-root", default="~/rlzoo-runs")
    c = sub.add_parser("collect", help="copy curves of the runs under --runs-root into results/curves")
    c.add_argument("--runs-root", default="~/rlzoo-runs")
    c.add_argument("--scores-csv", default=str(ROOT / "results" / "scores.csv"),
                   help="where finished runs' final returns are recorded")
    args = parser.parse_args()
    launch(args) if args.command == "launch" else collect(args)


if __name__ == "__main__":
    main()
