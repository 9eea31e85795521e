"""The offline benchmark's report: tables, learning curves and rliable aggregates from results/scores.csv.

    python -m benchmarks.offline report [--results results] [--reps 5000]

It reads the offline rows of <results>/scores.csv (data_source other than online) and writes
<results>/offline/: table.md (mean ± std over seeds per dataset × algorithm × steps, beside the
behaviour data's own normalized score from <results>/datasets.csv), curve-<source>-<dataset>.png
(learning curves, mean ± std over seeds), aggregate.csv (rliable IQM, median and mean across tasks with
95% stratified bootstrap CIs) and two figures of those aggregates: aggregate.png compares the plain
algorithms (the files' default hyperparameters) of each data source on one shared task set, the one with
the most tasks; aggregate-other.png holds every other entry (hyperparameter ablations such as
"td3_bc (alpha=10.0)", entries on fewer tasks), one row of panels per task set, so that no two entries
on different tasks share an axis. With several algorithms at one length, table.md also sets them side by
side per dataset, and where their task sets differ, each also gets an aggregate over the tasks they share
("in common"), the only aggregates that compare. Scores on official and on locally built data are
different tasks: they never share a table row or an aggregate; runs of different lengths are kept apart
too. So are runs trained on another build of their dataset than the one datasets.csv now lists (judged by
the dataset.json recorded with the run): they are listed apart, outside the tables. A run on a rebuild of
the listed recipe on another CPU type (same policy file, seed, steps and reference scores, data score
within REBUILD_TOLERANCE; builds are bit-exact only per CPU type) counts, its seeds marked †, with its
own data score stated.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

from benchmarks.launch import ALGORITHMS_DIR, ROOT, algorithm_module
from benchmarks.record_run import short_steps
from rlzoo.errors import RlzooError
from rlzoo.options import HOST_OPTIONS

SOURCE_TITLES = {
    "local": "locally built stand-ins, not the official D4RL files (data_source = local)",
    "official": "official Minari datasets (data_source = official; Minari's Gymnasium-v5 regenerations, "
    "not the D4RL v2 files)",
}
METRICS = ("IQM", "median", "mean")


def dataset_records(datasets_csv: Path):
    """A lookup (dataset, source) -> {ref_min_score, ref_max_score, return_mean, normalized_mean} of the builds
    now in results/datasets.csv, or None; a composite (medium-expert) without a row of its own gets its parts'
    reference scores and the steps-weighted means of their returns and normalized scores."""
    import pandas as pd

    from rlzoo.datasets import COMPOSITES, split_alias

    fields = ("ref_min_score", "ref_max_score", "return_mean", "normalized_mean")
    if not datasets_csv.exists():
        return lambda dataset, source: None
    table = pd.read_csv(datasets_csv, dtype={"policy_sha256": str})

    def record(r) -> dict:
        sha = getattr(r, "policy_sha256", None)
        recipe = {"policy_sha256": sha if isinstance(sha, str) and sha else None, "seed": int(r.seed),
                  "steps": int(r.steps), "kind": r.kind, "env_id": r.env_id}
        return {**{f: float(getattr(r, f)) for f in fields}, "recipe": recipe}

    out = {(r.dataset, r.source): (record(r), int(r.steps)) for r in table.itertuples()}

    def lookup(dataset: str, source: str) -> dict | None:
        if (dataset, source) in out:
            return out[(dataset, source)][0]
        parsed = split_alias(dataset)
        if parsed and parsed[1] in COMPOSITES:
            parts = [out.get((f"{parsed[0]}-{p}", source)) for p in COMPOSITES[parsed[1]]]
            if all(parts):
                total = sum(n for _, n in parts)
                mean = {f: sum(rec[f] * n for rec, n in parts) / total for f in ("return_mean", "normalized_mean")}
                return {"ref_min_score": parts[0][0]["ref_min_score"],
                        "ref_max_score": parts[0][0]["ref_max_score"], **mean}
        return None

    return lookup


def run_folder(row, curves_root: Path) -> Path:
    """The folder of a recorded run's curve files: its `config` column is <curves folder>/config.json, relative
    to curves_root, or an absolute path into the run directory."""
    ref = Path(str(row.config))
    return ref.parent if ref.is_absolute() else curves_root / ref.parts[0]


# A rebuild of the listed recipe elsewhere must still give about the listed data: its data score may differ by
# this many normalized points per part (rebuilds on two CPU types differed by at most 0.5; results/builds.csv).
REBUILD_TOLERANCE = 2.0


def rebuild_of_listed(part: dict, listed: dict | None) -> bool:
    """Whether a run's dataset part (its dataset.json entry) was built by the recipe datasets.csv lists, on
    another machine: the recipe's own settings, the same behaviour policy file (sha256), seed and steps, a
    medium-replay re-run that reproduced the committed actor, and a data score near the listed one."""
    from envs.listing import same_recipe
    from rlzoo.datasets import normalize

    recipe = part.get("recipe")
    if not recipe or listed is None or not recipe.get("full_recipe") or recipe.get("reproduces_medium_policy") is False:
        return False
    lo, hi = listed["ref_min_score"], listed["ref_max_score"]
    near = abs(normalize(part["return_mean"], lo, hi) - listed["normalized_mean"]) <= REBUILD_TOLERANCE
    return near and same_recipe(recipe, listed["recipe"])


def build_status(row, curves_root: Path, current) -> tuple[str | None, str | None]:
    """(mismatch, rebuild) for a recorded run. `mismatch` says why its dataset is not the build now in
    datasets.csv (None when it is, or when there is nothing to compare with): its normalized score then
    measures another task and stays out of the table. A build is known by its reference scores and its data
    return (over complete episodes); a composite (medium-expert) by each part's return, as its dataset.json
    lists them. `rebuild` describes a run whose data were built by the listed recipe on another machine:
    the same policy, seed and steps and reference scores, but not bit-identical data (most likely XLA's
    per-CPU float32 code, amplified by MuJoCo). Such a run counts, with its own data score stated."""
    import json

    from rlzoo.datasets import COMPOSITES, normalize, split_alias

    expected = current(row.task, row.data_source)
    if expected is None:
        return None, None
    record = run_folder(row, curves_root) / "dataset.json"
    if not record.exists():
        return "no dataset record (dataset.json) with the run, so its build is unknown", None
    got = json.loads(record.read_text())
    parsed = split_alias(row.task)
    parts = got.get("parts") or []
    if parsed and parsed[1] in COMPOSITES:
        names = [f"{parsed[0]}-{part}" for part in COMPOSITES[parsed[1]]]
        if len(parts) != len(names):
            return "a dataset record without its parts' returns, so its build is unknown", None
        # (name, recorded return, the return of the build now listed)
        returns = [(n, p.get("return_mean"), (current(n, row.data_source) or {}).get("return_mean"))
                   for n, p in zip(names, parts)]
    else:
        names = [row.task]
        returns = [(row.task, got.get("return_mean"), expected["return_mean"])]
    refs = [(k, got.get(k), expected[k]) for k in ("ref_min_score", "ref_max_score")]
    unknown = [k for k, g, _ in refs if g is None] + [f"return_mean of {n}" for n, g, _ in returns if g is None]
    if unknown:
        return f"a dataset record without {', '.join(unknown)}, so its build is unknown", None
    close = lambda a, b: b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))
    if all(close(g, e) for _, g, e in refs + returns):
        return None, None
    if (all(close(g, e) for _, g, e in refs) and len(parts) == len(names)
            and all(rebuild_of_listed(p, current(n, row.data_source)) for n, p in zip(names, parts))):
        lo, hi = expected["ref_min_score"], expected["ref_max_score"]
        steps = [p.get("transitions") or 0 for p in parts]
        data = sum(normalize(p["return_mean"], lo, hi) * n for p, n in zip(parts, steps)) / sum(steps)
        machines = sorted({str(p.get("built_on", "unrecorded")) for p in parts})
        return None, (
            "data return " + ", ".join(f"{n} {fmt(g)} (listed {fmt(e)})" for n, g, e in returns)
            + f", behaviour data {fmt(data)}; built on {'; '.join(machines)}"
        )
    return (
        "an earlier build (data return " + ", ".join(f"{n} {fmt(g)}" for n, g, _ in returns)
        + f", reference scores {fmt(got['ref_min_score'])} / {fmt(got['ref_max_score'])}; now "
        + ", ".join(f"{fmt(e) if e is not None else 'not listed'}" for _, _, e in returns)
        + f", {fmt(expected['ref_min_score'])} / {fmt(expected['ref_max_score'])})"
    ), None


def offline_rows(scores_csv: Path):
    import pandas as pd

    if not scores_csv.exists():
        raise RlzooError(f"{scores_csv} does not exist: run a sweep first (python -m benchmarks.offline run ...)")
    rows = pd.read_csv(scores_csv, dtype={"config": str, "data_source": str, "score_kind": str})
    rows = rows[rows["data_source"].notna() & (rows["data_source"] != "online")].copy()
    rows["score_kind"] = rows["score_kind"].fillna("last")
    return rows.sort_values(["data_source", "task", "algorithm", "steps", "seed", "date"])


def dataset_order(task: str) -> tuple:
    from rlzoo.datasets import KINDS, MUJOCO_ENVS, split_alias

    parsed = split_alias(task)
    if parsed is None:
        return (1, task)
    return (0, list(MUJOCO_ENVS).index(parsed[0]), KINDS.index(parsed[1]))


# Options of a run that do not change what it learns, beside rlzoo.options.HOST_OPTIONS (logging and bookkeeping):
# the data's name, seeds and length (keys of their own) and how it runs (chunk, checkpoints, downloads). Runs
# that differ only in these are one configuration.
# (scores_csv: an option runs had while they recorded their own scores; their config.json files keep it.)
NOT_HYPERPARAMETERS = {"env", "seed", "num_seeds", "total_steps", "chunk", "checkpoint_every", "download",
                       "scores_csv"}


def default_hyperparameters(algo: str, task: str) -> dict:
    """What algorithms/<algo>.py trains `task` with when no flag is given: its Config defaults (the paper's)
    with its per-task settings, as config.json would record them."""
    import dataclasses

    from rlzoo.cli import task_settings

    config_cls = algorithm_module(algo).Config
    config = config_cls(**task_settings(config_cls, task))
    config = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as JSON lists
    return {k: v for k, v in config.items() if k not in NOT_HYPERPARAMETERS | HOST_OPTIONS}


def label_variants(rows, curves_root: Path):
    """Runs of one algorithm with other hyperparameters (a sweep with its own --tag and flags) are other
    entries: the algorithm of each row becomes e.g. "iql (beta=10.0)" where its recorded config.json differs
    from what the algorithm file uses on that task by default (`default_hyperparameters`); for an algorithm
    whose file is gone, from its most used configuration. Options one of two configs lacks (added to the code
    later) are not compared. A seed recorded twice for one entry counts once (the newest)."""

    def hyperparameters(row) -> dict | None:
        path = run_folder(row, curves_root) / "config.json"
        if not path.exists():
            return None
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in NOT_HYPERPARAMETERS | HOST_OPTIONS}

    def differing(a: dict, b: dict) -> list[str]:
        return [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]

    rows = rows.copy()
    configs = [hyperparameters(r) for r in rows.itertuples()]
    labels = list(rows["algorithm"])
    tasks = list(rows["task"])
    for algo in dict.fromkeys(labels):
        mine = [i for i, a in enumerate(labels) if a == algo and configs[i] is not None]
        if (ALGORITHMS_DIR / f"{algo}.py").is_file():
            defaults = {task: default_hyperparameters(algo, task) for task in {tasks[i] for i in mine}}
            for i in mine:
                diff = differing(configs[i], defaults[tasks[i]])
                if diff:
                    labels[i] = f"{algo} ({', '.join(f'{k}={configs[i][k]}' for k in diff)})"
            continue
        distinct = {}
        for i in mine:
            distinct.setdefault(json.dumps(configs[i], sort_keys=True), []).append(i)
        representatives: list[dict] = []  # most used first: the first one is the algorithm's plain entry
        for key in sorted(distinct, key=lambda k: -len(distinct[k])):
            config = json.loads(key)
            rep = next((r for r in representatives if not differing(config, r)), None)
            if rep is None:
                representatives.append(rep := config)
            if rep is not representatives[0]:
                diff = ", ".join(f"{k}={rep[k]}" for k in differing(rep, representatives[0]))
                for i in distinct[key]:
                    labels[i] = f"{algo} ({diff})"
    rows["algorithm"] = labels
    keys = ["data_source", "task", "algorithm", "steps", "score_kind", "seed"]
    return rows.sort_values("date", kind="stable").drop_duplicates(keys, keep="last").sort_values(
        ["data_source", "task", "algorithm", "steps", "seed", "date"])


def groups(rows):
    """One group per (data_source, task, algorithm, steps, score_kind): never across sources or lengths."""
    keys = ["data_source", "task", "algorithm", "steps", "score_kind"]
    out = []
    for key, g in rows.groupby(keys, sort=False):
        out.append((dict(zip(keys, key)), g))
    return sorted(
        out,
        key=lambda kg: (
            kg[0]["data_source"],
            dataset_order(kg[0]["task"]),
            kg[0]["algorithm"],
            kg[0]["steps"],
            kg[0]["score_kind"],
        ),
    )


def curve_of(row, curves_root: Path):
    """The (steps, scores) evaluation curve of one seed of one recorded run, or None if it is missing."""
    import numpy as np

    eval_csv = run_folder(row, curves_root) / "eval.csv"
    if not eval_csv.exists():
        return None
    data = np.atleast_1d(np.genfromtxt(eval_csv, delimiter=",", names=True))
    mine = data[data["seed"] == int(row.seed)]
    return (mine["step"], mine["score"]) if len(mine) else None


# The second score kind of the report: each seed's mean over its last LAST_N evaluations, the protocol of the
# TD3+BC paper (evaluations every 5k steps, the final 10 averaged). One evaluation of 10 episodes is noisy
# where a policy swings between gaits from one evaluation to the next.
LAST_N = 10


def with_last_n(rows, curves_root: Path, n: int = LAST_N):
    """`rows` plus, for each last-evaluation row whose curve holds at least `n` evaluations up to its length,
    a row of score_kind f"last{n}" with the mean of those last `n` (read from the run's eval.csv)."""
    import pandas as pd

    extra = []
    for row in rows[rows["score_kind"] == "last"].itertuples(index=False):
        curve = curve_of(row, curves_root)
        if curve is None:
            continue
        steps, scores = curve
        scores = scores[steps <= row.steps]
        if len(scores) >= n:
            extra.append({**row._asdict(), "score": float(scores[-n:].mean()), "score_kind": f"last{n}"})
    return pd.concat([rows, pd.DataFrame(extra, columns=rows.columns)], ignore_index=True) if extra else rows


def plot_curves(grouped, curves_root: Path, out_dir: Path) -> list[Path]:
    """One PNG per (data source, dataset): mean ± std over seeds of each algorithm × steps group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_task: dict[tuple[str, str], list] = {}
    for key, g in grouped:
        if key["score_kind"] != "last":  # another summary of the same curves
            continue
        by_task.setdefault((key["data_source"], key["task"]), []).append((key, g))
    written = []
    for (source, task), entries in by_task.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = 0
        for key, g in entries:
            curves = [c for c in (curve_of(r, curves_root) for r in g.itertuples()) if c is not None]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
            if not steps:
                continue
            values = np.array([[dict(zip(s.tolist(), v.tolist()))[t] for t in steps] for s, v in curves])
            mean, std = values.mean(0), values.std(0)
            what = "seeds" if g["seed"].nunique() == len(curves) else "runs"
            label = f"{key['algorithm']} ({short_steps(int(key['steps']))} steps, {len(curves)} {what})"
            ax.plot(steps, mean, label=label)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        title = f"{task} ({'locally built stand-in' if source == 'local' else source + ' data'})"
        ax.set_title(title)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("normalized score (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"curve-{source}-{task.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def by_setting(grouped, value) -> dict[tuple, dict[str, dict[str, object]]]:
    """{(data source, steps, score kind): {algorithm: {task: value(group)}}}: what one comparison holds."""
    out: dict[tuple, dict[str, dict[str, object]]] = {}
    for key, g in grouped:
        setting = (key["data_source"], int(key["steps"]), key["score_kind"])
        out.setdefault(setting, {}).setdefault(key["algorithm"], {})[key["task"]] = value(g)
    return out


def common_tasks(algos: dict[str, dict]) -> set[str]:
    """The tasks every plain algorithm of one setting has (hyperparameter variants such as "iql (beta=10.0)",
    often run on a few tasks only, do not narrow it); empty when fewer than two plain algorithms differ in
    their tasks or fewer than two tasks are shared."""
    plain = [set(tasks) for algo, tasks in algos.items() if " (" not in algo]
    if len(plain) < 2 or all(t == plain[0] for t in plain):
        return set()
    common = set.intersection(*plain)
    return common if len(common) > 1 else set()


def aggregate(grouped, reps: int) -> list[dict]:
    """rliable IQM / median / mean across tasks with 95% stratified bootstrap CIs, one entry per
    (data source, algorithm, steps, score kind) over all of its tasks (task_set "all"). Aggregates over
    different task sets are not comparable, so where the plain algorithms of one (data source, steps, score
    kind) cover different tasks and share at least two (`common_tasks`), every algorithm that has those
    shared tasks gets a second entry over only them (task_set "common"; for an algorithm with no other
    tasks it equals its "all" entry). Tasks with more runs than others are cut to the smallest number of
    runs (lowest seeds first) so that the score matrix is runs × tasks."""
    import numpy as np

    from benchmarks.aggregate import interval_estimates

    jobs = []
    for (source, steps, kind), algos in sorted(by_setting(grouped, lambda g: g["score"].to_numpy(float)).items()):
        common = common_tasks(algos)
        for algo, tasks in sorted(algos.items()):
            jobs.append(((source, algo, steps, kind), tasks, "all"))
            if common and common <= set(tasks):
                jobs.append(((source, algo, steps, kind), {t: tasks[t] for t in common}, "common"))
    out = []
    for (source, algo, steps, kind), tasks, task_set in jobs:
        runs = min(len(v) for v in tasks.values())
        matrix = np.stack([tasks[t][:runs] for t in sorted(tasks)], axis=1)  # [runs, tasks]
        points, intervals = interval_estimates(matrix, reps)
        for m, name in enumerate(METRICS):
            out.append(
                {
                    "data_source": source,
                    "algorithm": algo,
                    "steps": steps,
                    "score_kind": kind,
                    "task_set": task_set,
                    "metric": name,
                    "value": float(points[m]),
                    "ci_low": float(intervals[0, m]),
                    "ci_high": float(intervals[1, m]),
                    "tasks": len(tasks),
                    "runs_per_task": runs,
                    "reps": reps,
                    "task_list": ";".join(sorted(tasks)),
                }
            )
    return out


def is_variant(algorithm: str) -> bool:
    """An entry of one algorithm with other hyperparameters than its file's defaults ("td3_bc (alpha=10.0)")."""
    return " (" in algorithm


def figure_groups(agg: list[dict]) -> tuple[list[tuple[str, list[dict]]], list[tuple[str, list[dict]]]]:
    """The aggregate entries (one dict per data source, task set, algorithm, steps and score kind, its IQM row
    standing for it) of the two figures, each as [(panel-row title, entries)]. aggregate.png: per data source,
    the plain algorithms on that source's widest task set (most tasks; then the one most plain entries share):
    what compares. aggregate-other.png: everything else (ablations, entries on fewer or other tasks), one
    panel row per task set. An "in common" entry whose tasks are its algorithm's own is drawn once."""
    entries, seen = [], set()
    for a in sorted(agg, key=lambda a: a["task_set"]):  # "all" before "common"
        key = (a["data_source"], a["algorithm"], a["steps"], a["score_kind"], a["task_list"])
        if a["metric"] == "IQM" and key not in seen:
            seen.add(key)
            entries.append(a)
    main, other = [], {}
    for source in sorted({a["data_source"] for a in entries}):
        mine = [a for a in entries if a["data_source"] == source]
        plain = [a for a in mine if not is_variant(a["algorithm"])]
        widest = max((a["task_list"] for a in plain), default=None,
                     key=lambda t: (len(t.split(";")), sum(a["task_list"] == t for a in plain), t))
        chosen = [a for a in plain if a["task_list"] == widest]
        if chosen:
            main.append((f"{source_title(source)}: {len(widest.split(';'))} tasks", chosen))
        for a in mine:
            if not any(a is c for c in chosen):
                other.setdefault((source, a["task_list"]), []).append(a)
    order = lambda kv: (kv[0][0], -len(kv[0][1].split(";")), kv[0][1])  # per source, wider task sets first
    rows = [(f"{source_title(source)}: {tasks.replace(';', ', ')}", group)
            for (source, tasks), group in sorted(other.items(), key=order)]
    return main, rows


def source_title(source: str) -> str:
    return "locally built stand-ins, not official D4RL" if source == "local" else f"{source} data"


def entry_label(a: dict) -> str:
    kind = "" if a["score_kind"] == "last" else ", " + a["score_kind"]
    return f"{a['algorithm']} ({short_steps(int(a['steps']))}{kind})"


def plot_aggregate(groups_: list[tuple[str, list[dict]]], agg: list[dict], path: Path) -> None:
    """One row of IQM / median / mean panels per (title, entries) group, with 95% CIs; every row holds
    entries on one task set only, named in its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [len(entries) for _, entries in groups_]
    fig, axes = plt.subplots(len(groups_), len(METRICS), squeeze=False, gridspec_kw={"height_ratios": sizes},
                             figsize=(4 * len(METRICS), 0.9 + 0.5 * sum(sizes) + 0.8 * len(groups_)))
    for r, (title, entries) in enumerate(groups_):
        for c, metric in enumerate(METRICS):
            ax = axes[r, c]
            for y, entry in enumerate(entries):
                same = ("data_source", "task_list", "algorithm", "steps", "score_kind")
                a = next(a for a in agg if a["metric"] == metric and all(a[k] == entry[k] for k in same))
                ax.errorbar([a["value"]], [y], xerr=[[a["value"] - a["ci_low"]], [a["ci_high"] - a["value"]]],
                            fmt="o", capsize=4)
            names = [entry_label(e) for e in entries]
            ax.set_yticks(range(len(names)), names if c == 0 else [""] * len(names))
            ax.set_ylim(-0.7, len(names) - 0.3)
            ax.set_xlabel(f"{metric} normalized score")
            ax.grid(axis="x", alpha=0.3)
        axes[r, 1].set_title(textwrap.shorten(title, 110) + " (95% stratified bootstrap CIs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(x: float) -> str:
    return f"{x:.1f}".replace("-", "−")


def side_by_side(mine, datasets, source: str) -> list[str]:
    """Markdown lines: for each (steps, score kind) with several algorithms, one row per dataset and one
    column per algorithm (mean ± std over seeds, and the number of seeds), beside the behaviour data."""
    def cell(g) -> str:
        scores = g["score"].to_numpy(float)
        return f"{fmt(scores.mean())} ± {fmt(scores.std())} ({len(scores)})"

    lines = []
    for (_, steps, kind), algos in sorted(by_setting(mine, cell).items()):
        if len(algos) < 2:
            continue
        names = sorted(algos)
        tasks = sorted({t for cells in algos.values() for t in cells}, key=dataset_order)
        what = "last evaluation" if kind == "last" else kind
        lines += ["", f"Side by side, {steps:,} steps ({what}; mean ± std (seeds)):", "",
                  "| dataset | " + " | ".join(names) + " | behaviour data |",
                  "|---|" + "---|" * (len(names) + 1)]
        for task in tasks:
            record = datasets(task, source)
            data = "—" if record is None else fmt(record["normalized_mean"])
            lines.append(f"| {task} | " + " | ".join(algos[a].get(task, "—") for a in names) + f" | {data} |")
    return lines


def markdown(grouped, agg: list[dict], datasets, scores_csv: Path, stale=None) -> str:
    """table.md: per data source its table, rebuilt-data notes, side-by-side view and aggregates; then the
    runs left out for their dataset's build."""
    lines = [
        "# Offline benchmark results",
        "",
        f"Generated by `python -m benchmarks.offline report` from `{scores_csv.name}` "
        f"({time.strftime('%Y-%m-%d')}); do not edit by hand. Score: D4RL normalized score "
        "100·(R − R_random)/(R_expert − R_random) with the dataset's reference scores, at the last "
        "evaluation (score_kind last) unless marked; (last10): each seed's mean over its last 10 evaluations, "
        "the TD3+BC paper's protocol (every 5k steps at the default), from the run's curve; mean ± std "
        "(population std) over seeds. "
        "Behaviour data: the dataset's own average normalized score (`datasets.csv`; medium-expert = its "
        "parts weighted by steps). Runs of different lengths are separate rows.",
    ]
    for source in sorted({k["data_source"] for k, _ in grouped}):
        mine = [(k, g) for k, g in grouped if k["data_source"] == source]
        lines += source_table(mine, datasets, source)
        lines += rebuilt_notes(mine)
        lines += side_by_side(mine, datasets, source)
        lines += aggregate_table([a for a in agg if a["data_source"] == source])
        devices = sorted({str(d) for _, g in mine for d in g["device"]})
        commits = sorted({str(c) for _, g in mine for c in g["commit"]})
        dates = sorted(str(d) for _, g in mine for d in g["date"])
        lines += [
            "",
            f"Runs on: {'; '.join(devices)}. Commits: {', '.join(commits)}. Finished {dates[0][:10]} to "
            f"{dates[-1][:10]}.",
        ]
    if stale is not None and not stale.empty:
        lines += left_out(stale)
    return "\n".join(lines) + "\n"


def source_table(mine, datasets, source: str) -> list[str]:
    """Markdown lines: one row per (dataset, algorithm, steps, score kind) of one data source."""
    lines = [
        "",
        f"## Data: {SOURCE_TITLES.get(source, f'data_source = {source}')}",
        "",
        "| dataset | algorithm | steps | normalized score | seeds | behaviour data |",
        "|---|---|---|---|---|---|",
    ]
    for key, g in mine:
        s = g["score"].to_numpy(float)
        rebuilt_seeds = g["rebuild"].notna().tolist() if "rebuild" in g else [False] * len(s)
        seeds = [f"{seed}{'†' if r else ''}" for seed, r in zip(g["seed"].astype(int).tolist(), rebuilt_seeds)]
        seed_text = f"{len(s)} ({', '.join(seeds)})"
        record = datasets(key["task"], source)
        data = None if record is None else record["normalized_mean"]
        kind = "" if key["score_kind"] == "last" else f" ({key['score_kind']})"
        lines.append(
            f"| {key['task']} | {key['algorithm']} | {int(key['steps']):,} | {fmt(s.mean())} ± "
            f"{fmt(s.std())}{kind} | {seed_text} | {'—' if data is None else fmt(data)} |"
        )
    return lines


def rebuilt_notes(mine) -> list[str]:
    """Markdown lines: the † note and each rebuilt run's own data, if any run counted on a rebuild."""
    rebuilt = [(key, g) for key, g in mine
               if key["score_kind"] == "last" and "rebuild" in g and g["rebuild"].notna().any()]
    if not rebuilt:
        return []
    lines = [
        "",
        "† Seeds trained on a rebuild of the dataset by the recipe `datasets.csv` lists (the same "
        "behaviour policy file, seed, steps and reference scores), most likely on another CPU type: "
        "builds repeat bit for bit only on one (`results/builds.csv`), so these data differ slightly from "
        "the listed build, whose score the behaviour-data column shows. Their own data:",
        "",
    ]
    for key, g in rebuilt:
        for config, note in sorted({(str(c), str(n)) for c, n in zip(g["config"], g["rebuild"])
                                    if isinstance(n, str)}):
            lines.append(f"- {key['task']}, {key['algorithm']} (`{Path(config).parent}`): {note}")
    return lines


def aggregate_table(rows: list[dict]) -> list[str]:
    """Markdown lines: the aggregates of one data source, one row per entry, and which figure holds what."""
    if not rows:
        return []
    shared = sorted({(a["steps"], a["task_list"]) for a in rows if a["task_set"] == "common"})
    lines = [
        "",
        "Aggregate across tasks (rliable, 95% stratified bootstrap CIs; `aggregate.csv`)."
        + ("" if not shared else " Compare algorithms over the same tasks only: the rows marked \"in "
           "common\" use just the tasks that every algorithm of that length has ("
           + "; ".join(f"{steps:,} steps: {tasks.replace(';', ', ')}" for steps, tasks in shared) + ").")
        + " `aggregate.png` draws the algorithms at their default hyperparameters on one shared task set; "
        "`aggregate-other.png` draws the other entries (hyperparameter variants, fewer tasks), one task set "
        "per row.",
        "",
        "| algorithm | steps | tasks | runs per task | IQM | median | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for task_set, algo, steps, kind in sorted({(a["task_set"], a["algorithm"], a["steps"], a["score_kind"])
                                               for a in rows}):
        m = {a["metric"]: a for a in rows
             if (a["task_set"], a["algorithm"], a["steps"], a["score_kind"]) == (task_set, algo, steps, kind)}
        cells = [f"{fmt(m[n]['value'])} [{fmt(m[n]['ci_low'])}, {fmt(m[n]['ci_high'])}]" for n in METRICS]
        label = algo + ("" if kind == "last" else f" ({kind})")
        tasks = f"{m['IQM']['tasks']}" + (" in common" if task_set == "common" else "")
        lines.append(f"| {label} | {steps:,} | {tasks} | {m['IQM']['runs_per_task']} | " + " | ".join(cells) + " |")
    return lines


def left_out(stale) -> list[str]:
    """Markdown lines: the runs on another or an unknown build of their dataset, outside every table."""
    lines = [
        "",
        "## Left out: runs on another or an unknown build of their dataset",
        "",
        "Their scores are normalized on a dataset that is no longer the one in `datasets.csv`, so they are "
        "neither in the tables nor in the aggregates above.",
        "",
        "| dataset | algorithm | steps | normalized score | seeds | run | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for (task, algo, steps, config, why), g in stale.groupby(
        ["task", "algorithm", "steps", "config", "mismatch"], sort=True
    ):
        s = g["score"].to_numpy(float)
        seeds = ", ".join(map(str, g["seed"].astype(int).tolist()))
        lines.append(
            f"| {task} | {algo} | {int(steps):,} | {fmt(s.mean())} ± {fmt(s.std())} | {len(s)} ({seeds}) | "
            f"`{Path(str(config)).parent}` | {why} |"
        )
    return lines


def write_aggregate_figures(agg: list[dict], out_dir: Path) -> list[Path]:
    """aggregate.png (what compares) and aggregate-other.png (the rest), each only when it has entries; an
    earlier report's figure that now has none is removed."""
    written = []
    for groups_, name in zip(figure_groups(agg), ("aggregate.png", "aggregate-other.png")):
        path = out_dir / name
        if groups_:
            plot_aggregate(groups_, agg, path)
            written.append(path)
        elif path.exists():
            path.unlink()
    return written


def report(args: argparse.Namespace) -> int:
    import csv

    results = Path(args.results)
    scores_csv, out_dir = results / "scores.csv", results / "offline"
    rows = offline_rows(scores_csv)
    if rows.empty:
        raise RlzooError(f"{scores_csv} has no offline rows (data_source official/local/...): run a sweep first.")
    datasets = dataset_records(results / "datasets.csv")
    status = [build_status(r, results / "curves", datasets) for r in rows.itertuples()]
    rows["mismatch"], rows["rebuild"] = [m for m, _ in status], [b for _, b in status]
    stale, rows = rows[rows["mismatch"].notna()], rows[rows["mismatch"].isna()]
    if rows.empty:
        raise RlzooError(f"every offline run in {scores_csv} was trained on another build of its dataset than the "
                         "one in datasets.csv: run the sweep again on the current datasets.")
    grouped = groups(with_last_n(label_variants(rows, results / "curves"), results / "curves"))
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(grouped, args.reps)
    table = markdown(grouped, agg, datasets, scores_csv, stale)
    (out_dir / "table.md").write_text(table)
    with (out_dir / "aggregate.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(agg[0]))
        writer.writeheader()
        writer.writerows(agg)
    figures = write_aggregate_figures(agg, out_dir)
    curves = plot_curves(grouped, results / "curves", out_dir)
    # A task whose runs all left the table (e.g. its dataset was relisted) keeps no figure of those runs.
    removed = sorted(p.name for p in out_dir.glob("curve-*.png") if p not in curves)
    for name in removed:
        (out_dir / name).unlink()
    print(table)
    print(
        f"[offline] wrote {out_dir / 'table.md'}, {out_dir / 'aggregate.csv'}, "
        + ", ".join(str(f) for f in figures) + f" and {len(curves)} learning-curve PNGs in {out_dir}"
        + (f"; removed the figures of tasks no run in the table is on: {', '.join(removed)}" if removed else "")
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `report` (benchmarks/offline.py's subcommand)."""
    parser.add_argument("--results", default=str(ROOT / "results"),
                        help="results folder (reads scores.csv, datasets.csv, curves/; writes offline/)")
    parser.add_argument("--reps", type=int, default=5000,
                        help="bootstrap resamples for the CIs (~1 s per 1000 per entry)")
    return parser
