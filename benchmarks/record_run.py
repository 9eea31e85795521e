"""Record a finished run in results/: its final per-seed scores into results/scores.csv and its
evaluation curve (eval.csv, curve.png, config.json, summary.json, dataset.json) into results/curves/.

    python -m benchmarks.record_run RUN_DIR [RUN_DIR ...] [--name NAME]

For runs started by hand (the harnesses record their own runs through `record`). The rows are built
from the run's summary.json (benchmarks/results.py), so commit, date, device and wall time are the run's own.
Recording is idempotent: a run whose rows are already in the scores CSV (same algorithm, task,
steps, finish date, seeds and scores) is not appended again, and a curves folder holding another run's
files is never overwritten (the new one gets a -2, -3, ... suffix). benchmarks/offline.py, online.py,
minatar.py and atari.py record their runs through `record` once the run's process has exited.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from benchmarks.results import append_scores

ROOT = Path(__file__).resolve().parent.parent
CURVE_FILES = ("eval.csv", "curve.png", "config.json", "summary.json", "dataset.json")


def short_steps(steps: int) -> str:
    """200000 -> 200k, 1000000 -> 1M, 300 -> 300."""
    if steps % 1_000_000 == 0:
        return f"{steps // 1_000_000}M"
    return f"{steps // 1000}k" if steps % 1000 == 0 else str(steps)


def recorded_seeds(scores_csv: Path, summary: dict) -> set[str]:
    """The seeds of this finished run (algorithm, task, steps, date, and each seed's score: sweep points that
    differ only in hyperparameters can finish in the same second) that `scores_csv` already holds a row of."""
    if not scores_csv.exists():
        return set()
    scores = {str(s): round(v, 3) for s, v in summary["final_scores"].items()}
    key = (summary["algorithm"], summary["task"], str(summary["steps"]), summary["date"])
    with scores_csv.open(newline="") as f:
        return {row["seed"] for row in csv.DictReader(f)
                if (row["algorithm"], row["task"], row["steps"], row["date"]) == key and row["seed"] in scores
                and float(row["score"]) == scores[row["seed"]]}


def already_recorded(scores_csv: Path, summary: dict) -> bool:
    """True when `scores_csv` holds a row for every seed of this finished run."""
    return recorded_seeds(scores_csv, summary) == {str(s) for s in summary["final_scores"]}


def curves_folder(curves_root: Path, name: str, summary: dict) -> Path:
    """`curves_root/name`, or `name-2`, `name-3`, ... when that folder already holds a different run."""
    for i in range(1, 1000):
        folder = curves_root / (name if i == 1 else f"{name}-{i}")
        saved = folder / "summary.json"
        if not folder.exists() or (saved.exists() and json.loads(saved.read_text()).get("date") == summary["date"]):
            return folder
    raise RuntimeError(f"too many curve folders named {name}-* in {curves_root}")


def record(run_dir: Path, scores_csv: Path, curves_root: Path, name: str | None = None) -> Path | None:
    """Copy the run's curve into `curves_root/<name>/` and append one row per seed to `scores_csv`.
    Returns the curves folder, or None when the run was already recorded (nothing is written then)."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if already_recorded(scores_csv, summary):
        print(f"{run_dir} is already recorded in {scores_csv}: not appended again")
        return None
    folder = curves_folder(curves_root, name or run_dir.name, summary)
    folder.mkdir(parents=True, exist_ok=True)
    for file in CURVE_FILES:
        if (run_dir / file).exists():
            shutil.copy(run_dir / file, folder / file)
    # The curve is in place before the rows that point at it ("config" = <curves folder>/config.json). Seeds
    # recorded by an earlier, interrupted call are not appended again.
    done = recorded_seeds(scores_csv, summary)
    missing = {s: v for s, v in summary["final_scores"].items() if str(s) not in done}
    append_scores(scores_csv, {**summary, "final_scores": missing}, f"{folder.name}/config.json")
    print(f"recorded {run_dir} -> {scores_csv}, {folder}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--name", default=None, help="folder name under results/curves (one run only)")
    parser.add_argument("--scores-csv", type=Path, default=ROOT / "results" / "scores.csv")
    parser.add_argument("--curves-dir", type=Path, default=ROOT / "results" / "curves")
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        record(run_dir, args.scores_csv, args.curves_dir, args.name if len(args.run_dirs) == 1 else None)


if __name__ == "__main__":
    main()
