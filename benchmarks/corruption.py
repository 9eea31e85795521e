"""Robust offline RL under data corruption (issue 34, RIQL's protocol): the table as one command, and its report.

    # the minimum table: 3 seeds x 100k steps; halfcheetah- and walker2d-medium-replay, clean and random
    # corruption of each target (rate 0.3, range 1.0) for IQL, RIQL and TD3+BC; adversarial corruption of each
    # target on walker2d-medium-replay for IQL and RIQL (each run resumable; re-run the same command)
    python -m benchmarks.corruption run
    python -m benchmarks.corruption run --jobs 2                      # two runs at a time
    python -m benchmarks.corruption run --settings clean random-rewards --algos riql   # a subset
    python -m benchmarks.corruption run ... -- --eval-every 10000    # flags after `--` go to every algorithm
    # the table and the rliable plot
    python -m benchmarks.corruption report

`run` is benchmarks/offline.py's harness, one sweep per setting: each run is `algorithms/<algo>.py --env
<dataset> --corruption-target <target> --corruption-mode <mode>` (nothing for clean), tagged with its setting
(<algo>-<dataset>-s0-n3-100k-<setting>) and recorded in <results>/scores.csv and <results>/curves/, with
<results> = results/corruption by default, apart from results/scores.csv, so that corrupted scores never enter
the clean offline tables. RIQL takes the authors' per-setting hyperparameters from its own table (riql.py's
TASKS). Before an adversarial setting's runs start, its corrupted copy (and the attacker, SAC-N trained
--corruption-attack-steps updates on the clean data) is built once, here, into the corruption cache that every
run then reads.

`report` reads <results>/scores.csv and each run's recorded config.json (what it was corrupted with, not its
name) and writes <results>/table.md (normalized score, mean ± std over seeds, per dataset x setting x
algorithm, the clean score first) and <results>/aggregate.png + aggregate.csv (rliable IQM, median and mean with
95% stratified bootstrap CIs over the corrupted settings: random ones for every algorithm, adversarial ones
apart), and prints whether RIQL's mean over the corrupted settings is above IQL's.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks import offline
from benchmarks.aggregate import METRICS, interval_estimates
from benchmarks.launch import ROOT
from rlzoo.errors import RlzooError

TARGETS = ("observations", "actions", "rewards", "dynamics")
SETTINGS = ("clean", *(f"random-{t}" for t in TARGETS), *(f"adversarial-{t}" for t in TARGETS))
ALGOS = ("iql", "riql", "td3_bc")
# The minimum table: dataset -> setting -> algorithms.
MINIMUM = {
    "halfcheetah-medium-replay": {s: ALGOS for s in SETTINGS if not s.startswith("adversarial")},
    "walker2d-medium-replay": {s: (ALGOS if not s.startswith("adversarial") else ("iql", "riql")) for s in SETTINGS},
}


def setting_flags(setting: str) -> list[str]:
    if setting == "clean":
        return []
    mode, target = setting.split("-", 1)
    return ["--corruption-target", target, "--corruption-mode", mode]


def plan(args: argparse.Namespace) -> dict[tuple[str, tuple[str, ...]], list[str]]:
    """{(setting, algorithms): [datasets]}: the minimum table, or every selected setting on --datasets."""
    unknown = [s for s in args.settings or () if s not in SETTINGS]
    if unknown:
        raise RlzooError(f"unknown setting {unknown[0]}: use {', '.join(SETTINGS)}")
    table = MINIMUM if not args.datasets else {d: {s: ALGOS for s in SETTINGS} for d in args.datasets}
    groups: dict = defaultdict(list)
    for dataset, settings in table.items():
        for setting, algos in settings.items():
            base = tuple(args.algos or ALGOS) if args.datasets else algos
            chosen = tuple(a for a in base if not args.algos or a in args.algos)
            if (args.settings and setting not in args.settings) or not chosen:
                continue
            groups[(setting, chosen)].append(dataset)
    return dict(groups)


def warm_cache(dataset: str, setting: str, extra: list[str]) -> None:
    """Build an adversarial setting's corrupted copy (and its attacker) once, before its runs start."""
    from rlzoo import corruption, datasets
    from rlzoo.cli import flag_in

    mode, target = setting.split("-", 1)
    names = [f.name for f in dataclasses.fields(corruption.CorruptionOptions)]
    values = {name: flag_in(extra, name, None) for name in names}
    numbers = {k: (int(v) if k.endswith(("seed", "steps", "critics")) else float(v))
               for k, v in values.items() if v is not None and k not in ("corruption_target", "corruption_mode")}
    options = corruption.CorruptionOptions(corruption_target=target, corruption_mode=mode, **numbers)
    ds = datasets.load(dataset, download="--no-download" not in extra)
    corruption.corrupt(ds, options, max_action=float(flag_in(extra, "max_action", 1.0)))


def run(args: argparse.Namespace) -> int:
    given = [t for t in args.extra if t.split("=", 1)[0] in ("--corruption-target", "--corruption-mode")]
    if given:
        raise RlzooError(f"{given[0].split('=', 1)[0]} is set by each setting; choose settings with --settings "
                         f"({', '.join(SETTINGS)}) and pass only other flags after `--`.")
    groups = plan(args)
    failed = 0
    for i, ((setting, algos), dsets) in enumerate(groups.items(), 1):
        print(f"[corruption] setting {i}/{len(groups)}: {setting} on {', '.join(dsets)} for {', '.join(algos)}",
              flush=True)
        if setting.startswith("adversarial") and not setting.endswith("rewards"):
            for dataset in dsets:
                warm_cache(dataset, setting, args.extra)
        sweep = argparse.Namespace(algos=list(algos), datasets=dsets, num_seeds=args.num_seeds, seed=args.seed,
                                   total_steps=args.total_steps, jobs=args.jobs, tag=setting,
                                   runs_root=args.runs_root, results=args.results,
                                   extra=setting_flags(setting) + list(args.extra))
        failed += offline.run_sweep(sweep)
    print(f"[corruption] done; report: python -m benchmarks.corruption report --results {args.results}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ report


def load_runs(results: Path) -> dict[tuple[str, str, str, int], list[float]]:
    """{(algorithm, dataset, setting, steps): [score per seed]} from scores.csv and each run's config.json."""
    scores = results / "scores.csv"
    if not scores.exists():
        raise RlzooError(f"{scores} does not exist: run `python -m benchmarks.corruption run` first.")
    out: dict = defaultdict(list)
    with scores.open(newline="") as f:
        for row in csv.DictReader(f):
            config = json.loads((results / "curves" / row["config"]).read_text())
            target = config.get("corruption_target", "none")
            setting = "clean" if target == "none" else f"{config['corruption_mode']}-{target}"
            out[(row["algorithm"], row["task"], setting, int(row["steps"]))].append(float(row["score"]))
    return out


def aggregate(per_task: dict[str, dict[str, list[float]]], reps: int) -> dict[str, dict]:
    """algorithm -> IQM / median / mean with 95% stratified bootstrap CIs over its [seeds, tasks] matrix."""
    out = {}
    for algo, tasks in per_task.items():
        seeds = min(len(v) for v in tasks.values())
        matrix = np.stack([np.asarray(v[:seeds]) for _, v in sorted(tasks.items())], axis=1)
        points, ci = interval_estimates(matrix, reps)
        out[algo] = {"tasks": len(tasks), "seeds": seeds,
                     **{m: (float(points[i]), float(ci[0, i]), float(ci[1, i])) for i, m in enumerate(METRICS)}}
    return out


def report(args: argparse.Namespace) -> int:
    results = Path(args.results)
    runs = load_runs(results)
    steps = args.steps or max(k[3] for k in runs)
    runs = {k[:3]: v for k, v in runs.items() if k[3] == steps}
    algos = [a for a in (*ALGOS, *sorted({k[0] for k in runs})) if any(k[0] == a for k in runs)]
    algos = list(dict.fromkeys(algos))
    lines = [f"# Offline RL under data corruption ({steps:,} steps; normalized score, mean ± std over seeds)", "",
             "| dataset | setting | " + " | ".join(algos) + " |", "|---|---|" + "---|" * len(algos)]
    for dataset in sorted({k[1] for k in runs}):
        for setting in SETTINGS:
            cells = [runs.get((a, dataset, setting)) for a in algos]
            if not any(cells):
                continue
            lines.append(f"| {dataset} | {setting} | " + " | ".join(
                f"{np.mean(c):.1f} ± {np.std(c):.1f} ({len(c)})" if c else "" for c in cells) + " |")
    families = {"random": {}, "adversarial": {}}
    for (algo, dataset, setting), scores in runs.items():
        if setting != "clean":
            families[setting.split("-")[0]].setdefault(algo, {})[f"{dataset} {setting}"] = scores
    rows = []
    for family, per_algo in families.items():
        if not per_algo:
            continue
        common = set.intersection(*(set(t) for t in per_algo.values()))  # compare on the settings all share
        agg = aggregate({a: {t: v for t, v in tasks.items() if t in common} for a, tasks in per_algo.items()},
                        args.reps) if common else {}
        for algo in algos:
            if algo in agg:
                rows.append({"family": family, "algorithm": algo, **agg[algo]})
    lines += ["", "Aggregates over the corrupted settings every listed algorithm has (rliable, 95% stratified "
              "bootstrap CIs):", "", "| corruption | algorithm | settings | IQM [CI] | mean [CI] |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['algorithm']} | {r['tasks']} | {r['iqm'][0]:.1f} [{r['iqm'][1]:.1f}, "
                     f"{r['iqm'][2]:.1f}] | {r['mean'][0]:.1f} [{r['mean'][1]:.1f}, {r['mean'][2]:.1f}] |")
    verdict = verdict_line(runs)
    lines += ["", verdict]
    (results / "table.md").write_text("\n".join(lines) + "\n")
    with (results / "aggregate.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["corruption", "algorithm", "settings", "seeds", *(f"{m}{s}" for m in ("iqm", "median", "mean")
                                                                          for s in ("", "_ci_low", "_ci_high"))])
        for r in rows:
            writer.writerow([r["family"], r["algorithm"], r["tasks"], r["seeds"],
                             *(f"{x:.4g}" for m in ("iqm", "median", "mean") for x in r[m])])
    if rows:
        plot(rows, results / "aggregate.png", steps)
    print("\n".join(lines))
    print(f"[corruption] wrote {results / 'table.md'}, {results / 'aggregate.csv'}"
          + (f", {results / 'aggregate.png'}" if rows else ""))
    return 0


def verdict_line(runs: dict) -> str:
    """RIQL's mean over the corrupted settings both RIQL and IQL have, against IQL's (the issue's target)."""
    shared = [(d, s) for (a, d, s) in runs if a == "riql" and s != "clean" and ("iql", d, s) in runs]
    if not shared:
        return "RIQL vs IQL: no corrupted setting has runs of both."
    riql = float(np.mean([np.mean(runs[("riql", d, s)]) for d, s in shared]))
    iql = float(np.mean([np.mean(runs[("iql", d, s)]) for d, s in shared]))
    word = "above" if riql > iql else "NOT above"
    return f"RIQL's mean over {len(shared)} corrupted settings: {riql:.1f}, {word} IQL's {iql:.1f}."


def plot(rows: list[dict], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 0.45 * len(rows) + 1.6))
    for ax, metric in zip(axes, ("iqm", "mean")):
        for i, r in enumerate(rows):
            color = {"iql": "tab:blue", "riql": "tab:red", "td3_bc": "tab:green"}.get(r["algorithm"], "tab:gray")
            ax.plot([r[metric][1], r[metric][2]], [i, i], color=color, lw=6, alpha=0.5)
            ax.plot(r[metric][0], i, "|", color="k", ms=14)
        ax.set_yticks(range(len(rows)), [f"{r['algorithm']} ({r['family']}, {r['tasks']})" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric.upper() if metric == 'iqm' else metric} normalized score (95% CI)")
    axes[1].set_yticks([])
    fig.suptitle(f"Offline RL under data corruption, {steps:,} steps (rliable)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corruption", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) the corruption table's runs and record them",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--algos", nargs="+", default=None, help="only these algorithms (default: the table's)")
    r.add_argument("--settings", nargs="+", default=None, help=f"only these settings, of {', '.join(SETTINGS)}")
    r.add_argument("--datasets", nargs="+", default=None,
                   help="every selected setting on these datasets instead of the minimum table's")
    r.add_argument("--num-seeds", type=int, default=3, help="seeds per run, trained together (vmapped)")
    r.add_argument("--seed", type=int, default=0, help="first seed")
    r.add_argument("--total-steps", type=int, default=100_000, help="gradient steps per seed")
    r.add_argument("--jobs", type=int, default=1, help="runs at a time")
    r.add_argument("--runs-root", default="~/rlzoo-runs/corruption", help="where run directories go")
    r.add_argument("--results", default=str(ROOT / "results" / "corruption"), help="results folder")
    p = sub.add_parser("report", help="table.md, aggregate.csv and aggregate.png from the recorded runs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "results" / "corruption"), help="results folder")
    p.add_argument("--steps", type=int, default=None, help="runs of this length (default: the longest)")
    p.add_argument("--reps", type=int, default=5000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if extra and args.command != "run":
        parser.error("flags after `--` are passed to the algorithms and only make sense with `run`")
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args) if args.command == "run" else report(args)
    except RlzooError as err:
        print("\nerror: " + textwrap.fill(str(err), width=100, subsequent_indent="  ", break_long_words=False,
                                           break_on_hyphens=False), file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
