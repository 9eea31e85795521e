"""Value heads compared (issue "classification value heads"): rliable IQM with 95% CIs per head, per family.

    # the runs (each resumable; rows land in results/scores.csv as each finishes)
    python -m benchmarks.minatar run --num-seeds 10 --total-steps 1064960            # mse: the runs that exist
    python -m benchmarks.minatar run --num-seeds 10 --total-steps 1064960 --value-head hl_gauss
    python -m benchmarks.minatar run --num-seeds 10 --total-steps 1064960 --value-head two_hot
    python -m benchmarks.offline run --algos iql td3_bc --datasets hopper-medium-replay walker2d-medium-replay \\
        halfcheetah-medium-replay --num-seeds 3 --total-steps 30000 --tag heads-hl_gauss -- --value-head hl_gauss
    (and the same with --tag heads-mse -- --value-head mse)
    # the comparison
    python -m benchmarks.heads

Reads results/scores.csv and writes results/heads/<family>.csv (IQM, median and mean with 95% stratified
bootstrap CIs, one row per algorithm and head, plus each task's mean) and results/heads/<family>.png.
Families: `minatar` (PQN, the four games; runs named pqn-<game>-<settings>-<head>, mse's without the
suffix, i.e. the earlier runs of the same settings, whose numbers the default head leaves unchanged), each
game's return divided by rlzoo's 10-seed mse mean at the paper's length (the H200 runs of results/README.md)
so that games of different scales aggregate; `offline` (IQL and TD3+BC on the
medium-replay datasets; runs tagged heads-<head>), D4RL-normalized scores as recorded. The issue asks for 200k
steps; 30k (--offline-steps, the default here) is what the 2-core CPU allowed for the 12 runs.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.aggregate import METRICS, interval_estimates
from benchmarks.launch import ROOT

HEADS = ("mse", "two_hot", "hl_gauss")
GAMES = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")
MINATAR_REFERENCE = "s0-n10-9994240-decay9994240-gpu-h200"  # rlzoo's paper-length runs: the normalizer


def load_scores(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_name(row: dict) -> str:
    return Path(row["config"]).parent.name


def minatar_runs(rows: list[dict], settings: str, tag: str = "") -> dict[tuple[str, str], dict[str, list[float]]]:
    """{("pqn", head): {game: [score per seed]}} of the runs pqn-<game>-<settings>[-<head>][-<tag>] (no head:
    mse), as benchmarks.minatar names them."""
    tail = f"-{re.escape(tag)}" if tag else ""
    pattern = re.compile(
        rf"^pqn-(?P<game>[A-Za-z]+-MinAtar)-{re.escape(settings)}(-(?P<head>{'|'.join(HEADS)}))?{tail}$")
    out: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        m = pattern.match(run_name(row))
        if row["algorithm"] == "pqn" and m:
            out[("pqn", m["head"] or "mse")][m["game"]].append(float(row["score"]))
    return out


def minatar_normalizer(rows: list[dict]) -> dict[str, float]:
    ref = defaultdict(list)
    for row in rows:
        if row["algorithm"] == "pqn" and run_name(row) == f"pqn-{row['task']}-{MINATAR_REFERENCE}":
            ref[row["task"]].append(float(row["score"]))
    return {game: float(np.mean(v)) for game, v in ref.items()}


def offline_runs(rows: list[dict], steps: int) -> dict[tuple[str, str], dict[str, list[float]]]:
    """{(algorithm, head): {dataset: [normalized score per seed]}} of the runs tagged heads-<head>."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        m = re.match(rf"^(?P<algo>\w+)-(?P<ds>[\w-]+)-s\d+-n\d+-\w+-heads-(?P<head>{'|'.join(HEADS)})$", run_name(row))
        if m and int(row["steps"]) == steps and m["algo"] == row["algorithm"]:
            out[(row["algorithm"], m["head"])][row["task"]].append(float(row["score"]))
    return out


def aggregate(runs: dict, tasks: tuple[str, ...] | None, reps: int) -> list[dict]:
    """One row per (algorithm, head) that has every task: IQM / median / mean over the [seeds, tasks] matrix
    with rliable's 95% stratified bootstrap CIs, and each task's mean."""
    all_tasks = tasks or tuple(sorted({t for per_task in runs.values() for t in per_task}))
    out = []
    for (algo, head), per_task in sorted(runs.items(), key=lambda kv: (kv[0][0], HEADS.index(kv[0][1]))):
        if any(t not in per_task for t in all_tasks):
            print(f"[heads] {algo} {head}: left out, no runs on {', '.join(t for t in all_tasks if t not in per_task)}")
            continue
        seeds = min(len(per_task[t]) for t in all_tasks)
        matrix = np.stack([np.asarray(per_task[t][:seeds]) for t in all_tasks], axis=1)
        points, ci = interval_estimates(matrix, reps)
        row = {"algorithm": algo, "head": head, "seeds": seeds, "tasks": len(all_tasks)}
        for m, name in enumerate(METRICS):
            row.update({name: points[m], f"{name}_ci_low": ci[0, m], f"{name}_ci_high": ci[1, m]})
        row.update({f"mean {t}": float(np.mean(per_task[t][:seeds])) for t in all_tasks})
        out.append(row)
    return out


def write(rows: list[dict], family: str, title: str, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"{family}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    labels = [f"{r['algorithm']} {r['head']}" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.2))
    colors = {"mse": "tab:gray", "two_hot": "tab:blue", "hl_gauss": "tab:orange"}
    for i, r in enumerate(rows):
        ax.plot([r["iqm_ci_low"], r["iqm_ci_high"]], [i, i], color=colors[r["head"]], lw=6, alpha=0.5)
        ax.plot(r["iqm"], i, "|", color="k", ms=14)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("IQM (95% stratified bootstrap CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"{family}.png", dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], tasks: list[str]) -> str:
    lines = ["| algorithm | head | IQM [95% CI] | mean | " + " | ".join(tasks) + " |",
             "|---|---|---|---|" + "---|" * len(tasks)]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['head']} | {r['iqm']:.3f} [{r['iqm_ci_low']:.3f}, "
                     f"{r['iqm_ci_high']:.3f}] | {r['mean']:.3f} | "
                     + " | ".join(f"{r['mean ' + t]:.2f}" for t in tasks) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scores", default=str(ROOT / "results" / "scores.csv"))
    p.add_argument("--out", default=str(ROOT / "results" / "heads"))
    p.add_argument("--minatar-settings", default="s0-n10-1064960-decay9994240")
    p.add_argument("--minatar-tag", default="", help="the runs' --tag (e.g. gpu-h200)")
    p.add_argument("--offline-steps", type=int, default=30_000, help="the offline runs' --total-steps")
    p.add_argument("--reps", type=int, default=5000, help="bootstrap resamples")
    args = p.parse_args(argv)
    rows = load_scores(Path(args.scores))

    norm = minatar_normalizer(rows)
    minatar = {k: {g: [s / norm[g] for s in v] for g, v in per.items() if g in norm}
               for k, per in minatar_runs(rows, args.minatar_settings, args.minatar_tag).items()}
    agg = aggregate(minatar, GAMES, args.reps)
    if agg:
        write(agg, "minatar", f"PQN on MinAtar, {args.minatar_settings}: return / rlzoo's paper-length mse mean",
              Path(args.out))
        print(f"MinAtar (normalizers {', '.join(f'{g} {v:.1f}' for g, v in norm.items())}):\n"
              + markdown(agg, list(GAMES)))
    offline = offline_runs(rows, args.offline_steps)
    tasks = tuple(sorted({t for per in offline.values() for t in per}))
    agg = aggregate(offline, tasks, args.reps)
    if agg:
        write(agg, "offline", f"medium-replay (locally built), {args.offline_steps} steps: normalized score",
              Path(args.out))
        print("Offline:\n" + markdown(agg, list(tasks)))


if __name__ == "__main__":
    main()
