"""Record a finished run in results/: its final per-seed scores into results/scores.csv and its
evaluation curve (CSV + PNG) into results/curves/.

    python benchmarks/record_run.py RUN_DIR [RUN_DIR ...] [--name NAME]

For runs started without `--scores-csv results/scores.csv`. The row is built from the run's
summary.json (written by rlzoo.run.finish), so commit, date, device and wall time are the run's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from rlzoo.run import append_scores

ROOT = Path(__file__).resolve().parent.parent


def record(run_dir: Path, name: str | None, scores_csv: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    append_scores(scores_csv, summary, f"{name or run_dir.name}/config.json")
    curves = ROOT / "results" / "curves" / (name or run_dir.name)
    curves.mkdir(parents=True, exist_ok=True)
    for file in ("eval.csv", "curve.png", "config.json", "summary.json"):
        if (run_dir / file).exists():
            shutil.copy(run_dir / file, curves / file)
    print(f"recorded {run_dir} -> {scores_csv}, {curves}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--name", default=None, help="folder name under results/curves (one run only)")
    parser.add_argument("--scores-csv", type=Path, default=ROOT / "results" / "scores.csv")
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        record(run_dir, args.name if len(args.run_dirs) == 1 else None, args.scores_csv)


if __name__ == "__main__":
    main()
