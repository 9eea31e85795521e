"""The stitching benchmark (issue "model-based offline RL, part 2"): MBRCSL against plain RCSL, IQL, TD3+BC and CQL
on the locally built `pointmaze-stitch` task, and the behaviour data's own score.

    # the runs (resumable; rows land in results/scores.csv as each finishes)
    python -m benchmarks.offline run --algos mbrcsl --datasets pointmaze-stitch --num-seeds 3 --total-steps 7000 \\
        -- --eval-every 1000
    python -m benchmarks.offline run --algos mbrcsl --datasets pointmaze-stitch --num-seeds 3 --total-steps 7000 \\
        --tag rcsl -- --eval-every 1000 --no-model
    python -m benchmarks.offline run --algos iql td3_bc --datasets pointmaze-stitch --num-seeds 3 --total-steps 30000
    python -m benchmarks.offline run --algos cql --datasets pointmaze-stitch --num-seeds 3 --total-steps 3000 \\
        -- --eval-every 1000
    # the table, the rliable plot and a picture of one MBRCSL rollout
    python -m benchmarks.stitch [--record]

Reads the scores.csv rows of task pointmaze-stitch (the newest run per method and step count) and writes, with
--record, results/stitch/scores.csv (per method: seeds, steps, IQM with its 95% stratified bootstrap CI, mean ± std
of the normalized final score), results/stitch/scores.png (the IQMs and CIs beside the data's mean and best
episode) and results/stitch/rollout.png (the maze, both data families, and the best model rollout that MBRCSL
kept for seed 0 and its median one, drawn again with the default options and the saved dynamics model).
Without --record it prints.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks.aggregate import interval_estimates
from benchmarks.launch import ROOT

TASK = "pointmaze-stitch"
OUT = ROOT / "results" / "stitch"
LABELS = {"mbrcsl": "MBRCSL", "mbrcsl-rcsl": "RCSL (no model)", "iql": "IQL", "td3_bc": "TD3+BC", "cql": "CQL"}


def method(row: dict) -> str:
    """mbrcsl, mbrcsl-rcsl (the --tag rcsl runs), iql, td3_bc, cql."""
    run = Path(row["config"]).parent.name
    return f"{row['algorithm']}-rcsl" if run.endswith("-rcsl") else row["algorithm"]


def load(scores: Path) -> dict[str, dict]:
    """method -> {steps, commit, scores [seeds]} of its newest run on the task."""
    with scores.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["task"] == TASK]
    runs: dict[tuple, dict] = {}
    for r in rows:
        key = (method(r), r["config"])
        runs.setdefault(key, {"steps": int(r["steps"]), "commit": r["commit"], "date": r["date"], "scores": []})
        runs[key]["scores"].append(float(r["score"]))
    newest: dict[str, dict] = {}
    for (m, _), run in sorted(runs.items(), key=lambda kv: kv[1]["date"]):
        newest[m] = run
    return newest


def data_scores() -> tuple[float, float]:
    """(mean, best) normalized return of the dataset's episodes."""
    from rlzoo import datasets

    ds = datasets.load(TASK, download=False)
    normalized = ds.normalized_score(ds.episode_returns)
    return float(np.mean(normalized)), float(np.max(normalized))


def table(runs: dict[str, dict], reps: int) -> list[dict]:
    out = []
    for m in [k for k in LABELS if k in runs]:
        s = np.asarray(runs[m]["scores"])
        points, ci = interval_estimates(s[:, None], reps)
        out.append({"method": LABELS[m], "seeds": len(s), "steps": runs[m]["steps"], "iqm": points[0],
                    "iqm_ci_low": ci[0, 0], "iqm_ci_high": ci[1, 0], "mean": s.mean(), "std": s.std(),
                    "commit": runs[m]["commit"]})
    return out


def plot(rows: list[dict], data_mean: float, data_best: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        ax.plot([r["iqm_ci_low"], r["iqm_ci_high"]], [i, i], color="tab:blue", lw=6, alpha=0.5)
        ax.plot(r["iqm"], i, "|", color="k", ms=14)
    ax.axvline(data_mean, color="tab:gray", ls=":", label=f"data mean {data_mean:.1f}")
    ax.axvline(data_best, color="tab:red", ls="--", label=f"data's best episode {data_best:.1f}")
    ax.set_yticks(range(len(rows)), [f"{r['method']} ({r['steps']:,} steps)" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("normalized score: IQM over seeds, 95% bootstrap CI")
    ax.set_title(f"{TASK} (locally built), {rows[0]['seeds']} seeds", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rollout_picture(path: Path) -> tuple[float, float]:
    """Draw the best and the median rollout MBRCSL keeps for seed 0 (default options, the saved dynamics model);
    their model returns."""
    from algorithms import mbrcsl
    from envs import pointmaze
    from rlzoo import datasets, dynamics

    config = mbrcsl.Config(quiet=True)
    ds = datasets.load(TASK, download=False)
    model, _ = dynamics.load_or_train(ds, dynamics.options_config(config), seed=config.dynamics_seed)
    kept = mbrcsl.collect_rollouts(config, ds, model, [0], progress=False)[0]
    order = np.argsort(kept["returns"])
    best, median = int(order[-1]), int(order[len(order) // 2])
    xy = lambda i: kept["observations"][kept["mask"][:, i], i, :2]
    pointmaze.draw(str(path), per_family=25, extra=[
        (xy(median), f"median kept model rollout (return {kept['returns'][median]:.1f})", "tab:purple"),
        (xy(best), f"best kept model rollout (return {kept['returns'][best]:.1f})", "tab:green")])
    return float(kept["returns"][best]), float(kept["returns"][median])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scores", default=str(ROOT / "results" / "scores.csv"))
    p.add_argument("--reps", type=int, default=5000, help="bootstrap resamples")
    p.add_argument("--record", action="store_true", help="write results/stitch/")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    runs = load(Path(args.scores))
    rows = table(runs, args.reps)
    data_mean, data_best = data_scores()
    print("| method | steps | seeds | IQM [95% CI] | mean ± std |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['steps']:,} | {r['seeds']} | {r['iqm']:.1f} [{r['iqm_ci_low']:.1f}, "
              f"{r['iqm_ci_high']:.1f}] | {r['mean']:.1f} ± {r['std']:.1f} |")
    print(f"| data (mean / best episode) | | | | {data_mean:.1f} / {data_best:.1f} |")
    if args.record and rows:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "scores.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]) + ["data_mean", "data_best"])
            w.writeheader()
            w.writerows({**{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()},
                         "data_mean": f"{data_mean:.4g}", "data_best": f"{data_best:.4g}"} for r in rows)
        plot(rows, data_mean, data_best, out / "scores.png")
        best, median = rollout_picture(out / "rollout.png")
        print(f"recorded in {out} (scores.csv, scores.png, rollout.png: the kept rollouts' best and median model "
              f"returns {best:.1f} and {median:.1f})")


if __name__ == "__main__":
    main()
