"""PQN on Atari (ale-py): short runs on a few games, recording frames, frames/s and the raw game score.

    python -m benchmarks.atari --games Breakout Pong SpaceInvaders --total-steps 65536   # 2-core CPU
    python -m benchmarks.atari --games Breakout Pong --total-steps 2457600 --num-seeds 2  # GPU machine

Each game is one `algorithms/pqn_atari.py` run with the paper's Atari table (128 envs x 32 steps, lr 2.5e-4,
epsilon to 0.001, reward clipping and episodic life for training) except the length: --total-steps env
steps (frames = 4 x env steps) with the epsilon schedule compressed to that length (--decay-steps,
default: the run's length). Evaluation plays --eval-episodes greedy games per seed with the raw score,
capped at --eval-max-steps agent steps (default ALE's own limit; the first runs' 4,500 could cut long games, which
pqn_atari.py now reports). Each finished run is recorded once, after its process exits (benchmarks/record_run.py:
its final evaluation in results/scores.csv, its curve files in results/curves/<run>/); this script then writes
results/curves/<run>.csv (training episode return, raw score, per chunk; <run> names the game and every
setting), results/curves/<run>-eval.csv (each evaluation's mean and sd over its greedy games) and one line
per run to results/curves/pqn-atari-runs.csv with frames, wall time and frames/s, and draws the training curves
of the games run with the same settings into results/curves/pqn-atari-<settings>.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

from benchmarks.launch import ROOT, start_or_resume_command
from benchmarks.record_run import record

CURVES = ROOT / "results" / "curves"
SCORES = ROOT / "results" / "scores.csv"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", nargs="+", default=["Breakout", "Pong", "SpaceInvaders"])
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--total-steps", type=int, default=65_536, help="env steps per seed (multiple of --chunk)")
    p.add_argument("--chunk", type=int, default=16_384, help="env steps per chunk (multiple of 4096)")
    p.add_argument("--decay-steps", type=int, default=0, help="epsilon/lr schedule span (0: the run's length)")
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--eval-max-steps", type=int, default=27_000,
                   help="agent steps per evaluation game (x4 frames; 27,000 is ALE's own 108k-frame limit)")
    p.add_argument("--runs-root", default="~/rlzoo-runs")
    p.add_argument("--no-xla", action="store_true", help="step ale-py from the host instead of inside the jit")
    p.add_argument("--env-threads", type=int, default=0,
                   help="ale-py worker threads per run (0: one per core); games run side by side share the cores")
    args = p.parse_args(argv)
    root = Path(args.runs_root).expanduser()
    CURVES.mkdir(parents=True, exist_ok=True)
    # Everything that changes the run is in its name: a rerun with other settings is another run.
    settings = (f"n{args.num_seeds}-{args.total_steps}-decay{args.decay_steps or args.total_steps}"
                f"-eval{args.eval_episodes}x{args.eval_max_steps}" + ("-host" if args.no_xla else ""))
    for game in args.games:
        d = root / f"pqn-atari-{game}-{settings}"
        if not (d / "summary.json").exists():
            cmd = start_or_resume_command("pqn_atari", d, [
                "--env", game, "--num-seeds", str(args.num_seeds), "--total-steps", str(args.total_steps),
                "--chunk", str(args.chunk), "--checkpoint-every", str(args.chunk),
                "--eval-every", str(args.total_steps), "--decay-steps", str(args.decay_steps),
                "--eval-episodes", str(args.eval_episodes), "--eval-max-steps", str(args.eval_max_steps),
                "--env-threads", str(args.env_threads),
            ] + (["--no-atari-xla"] if args.no_xla else []))
            cmd += ["--quiet"]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        record(d, SCORES, CURVES)  # once: a run collected again is not appended twice
        shutil.copy(d / "train.csv", CURVES / f"{d.name}.csv")
        shutil.copy(d / "eval.csv", CURVES / f"{d.name}-eval.csv")  # per seed: mean and sd over the greedy games
        list_run(game, d, CURVES / "pqn-atari-runs.csv")
    plot(settings)


def list_run(game: str, d: Path, runs: Path) -> None:
    """One line per finished run in pqn-atari-runs.csv (frames, wall time, frames/s, final raw scores); a run
    collected again is listed once."""
    summary = json.loads((d / "summary.json").read_text())
    config = json.loads((d / "config.json").read_text())
    new = not runs.exists()
    if not new:
        with runs.open(newline="") as f:
            if any(r["game"] == game and r["date"] == summary["date"] for r in csv.DictReader(f)):
                return
    with runs.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["game", "seeds", "env_steps_per_seed", "frames_per_seed", "wall_s", "frames_per_s",
                             "final_eval_raw_score", "eval_episodes", "eval_max_steps", "atari_xla", "device",
                             "commit", "date"])
        frames = 4 * summary["steps"]
        writer.writerow([game, len(summary["final_scores"]), summary["steps"], frames, round(summary["wall_s"], 1),
                         round(frames * len(summary["final_scores"]) / summary["wall_s"], 1),
                         ";".join(f"{v:g}" for v in summary["final_scores"].values()),
                         config["eval_episodes"], config["eval_max_steps"], config["atari_xla"],
                         summary["device"], summary["commit"], summary["date"]])
    print(f"{game}: {frames} frames per seed in {summary['wall_s']:.0f} s, final {summary['final_scores']}")


def plot(settings: str) -> None:
    """The training curves (raw score of each env's last finished game, epsilon-greedy, mean over envs) of every
    game run with these settings, this call's or an earlier one's, one panel per game, against frames:
    results/curves/pqn-atari-<settings>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    suffix = f"-{settings}.csv"
    have = sorted(f.name[len("pqn-atari-"):-len(suffix)] for f in CURVES.glob(f"pqn-atari-*{suffix}"))
    if not have:
        return
    fig, axes = plt.subplots(1, len(have), figsize=(4 * len(have) + 0.5, 3.3), squeeze=False)
    for ax, game in zip(axes[0], have):
        data = np.atleast_1d(np.genfromtxt(CURVES / f"pqn-atari-{game}-{settings}.csv", delimiter=",", names=True))
        for seed in sorted(set(data["seed"].astype(int))):
            sel = data["seed"] == seed
            ax.plot(4 * data["step"][sel], data["episode_return"][sel], lw=1.5, label=f"seed {seed}")
        ax.set_title(game)
        ax.set_xlabel("frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("training game score (raw)")
    fig.suptitle(f"PQN on Atari (rlzoo, ale-py)\n{settings}", fontsize=10)  # two lines: fits one panel too
    fig.tight_layout()
    fig.savefig(CURVES / f"pqn-atari-{settings}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
