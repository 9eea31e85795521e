"""The rules of results/scores.csv: its columns and how a finished run's summary becomes its rows.

One row per (algorithm, task, seed) of a finished run, built from the run's summary.json (rlzoo's
`finish` writes it), so that commit, date, device and wall time are the run's own. The harnesses record
through `benchmarks.record_run.record`, which copies the run's curve beside the rows and calls this.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rlzoo.errors import RlzooError

SCORES_COLUMNS = ["algorithm", "task", "data_source", "seed", "steps", "score", "score_kind", "wall_s", "device",
                  "commit", "date", "config", "jax", "ran_on"]


def ran_on(summary: dict) -> str:
    """Where a run ran, `<launcher>@<host>` (e.g. ray@node-3, slurm@gpu017, direct@laptop); '' for runs recorded
    before summaries named it."""
    return f"{summary.get('launcher', 'direct')}@{summary['host']}" if summary.get("host") else ""


def append_scores(path: Path, summary: dict, config_ref: str) -> None:
    """Append one row per seed of a run's summary to the scores CSV at `path` (header written for a new file).
    A file with other columns is refused rather than given rows that do not line up with its header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != SCORES_COLUMNS:
            raise RlzooError(
                f"{path} has the columns {', '.join(header)}, not those of a scores CSV ({', '.join(SCORES_COLUMNS)}): "
                "it is another file or an older format. Move it aside (or name another file) and record again."
            )
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(SCORES_COLUMNS)
        for seed, score in summary["final_scores"].items():
            writer.writerow([summary["algorithm"], summary["task"], summary["data_source"], seed, summary["steps"],
                             round(score, 3), "last", round(summary["wall_s"], 1), summary["device"],
                             summary["commit"], summary["date"], config_ref, summary.get("jax", ""),
                             ran_on(summary)])
