"""Rows of results/datasets.csv (the build of each dataset that the results were trained on) and
results/builds.csv (a log of every recorded build), and the rule of whether a build is the listed one.

Builds repeat bit for bit per CPU type only (see rlzoo.provenance.cpu_signature), so a rebuild of the listed
recipe with other data does not replace the listed row: the runs trained on that build keep their data score."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from envs.recipes import build_command
from envs.shared import ROOT, rel
from envs.store import on_disk_build
from rlzoo.datasets import recipe_of
from rlzoo.errors import RlzooError

RESULTS_CSV = ROOT / "results" / "datasets.csv"  # builds.csv is its sibling
DATASET_COLUMNS = ["dataset", "env_id", "kind", "source", "policy", "policy_sha256", "seed", "episodes", "steps",
                   "return_mean", "return_std", "ref_min_score", "ref_max_score", "normalized_mean"]
BUILD_LOG_COLUMNS = ["dataset", "date", "machine", "xla_flags", "commit", "episodes", "steps", "return_mean",
                     "normalized_mean", "policy_sha256", "seed", "listed_return_mean", "identical_to_listed",
                     "medium_policy_max_abs_diff",  # for medium-replay re-runs: 0.0 = the committed actor
                     "collect_seconds", "actions_log", "identical_to_log"]
# actions_log: a medium-replay replayed from that log; identical_to_log: its data's sha256 equals the log's


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write `rows` under the header `columns` to `path` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def listed_row(path: Path, alias: str) -> dict | None:
    """The row of `alias` in the datasets.csv at `path`, or None."""
    return next((r for r in _read_csv(path) if r.get("dataset") == alias), None)


def upsert_row(path: Path, row: dict) -> None:
    """Replace the row of `row["dataset"]` in the CSV at `path` (or append it), keeping the other rows."""
    rows = [r for r in _read_csv(path) if r.get("dataset") != row["dataset"]]
    rows.append({k: row.get(k, "") for k in DATASET_COLUMNS})
    _write_csv(path, DATASET_COLUMNS, sorted(rows, key=lambda r: r["dataset"]))


def _append_log(path: Path, row: dict) -> None:
    """Append a row to builds.csv, written with all of BUILD_LOG_COLUMNS (a log from before a column was
    added gets it, empty in its old rows)."""
    _write_csv(path, BUILD_LOG_COLUMNS, [*_read_csv(path), row])


def _close(a, b) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def same_recipe(recipe: dict, listed: dict) -> bool:
    """Whether a build's recipe has the inputs of a results/datasets.csv row: the same env, kind, behaviour
    policy file (sha256; none for random), seed and steps. Reference scores are compared by the callers."""
    return ((listed.get("policy_sha256") or "") == (recipe.get("policy_sha256") or "")
            and str(listed.get("kind")) == str(recipe.get("kind")) and listed.get("env_id") == recipe.get("env_id")
            and int(listed["seed"]) == int(recipe["seed"]) and int(listed["steps"]) == int(recipe["steps"]))


def same_stats(listed: dict | None, record: dict) -> bool:
    """Whether a datasets.csv row and a build record have the same episode count and mean return (the same data,
    short of comparing them)."""
    return listed is not None and int(listed["episodes"]) == record["episodes"] and _close(
        listed["return_mean"], record["return_mean"])


@dataclass
class Verdict:
    """How a build compares with the build results/datasets.csv lists for its dataset."""

    listed: dict | None  # the listed row, if any
    recipe_matches: bool  # the same recipe (policy file, seed, steps) and reference scores
    identical: bool  # ... and the same data


def compare(results_csv: Path, record: dict) -> Verdict:
    """The verdict on a build record against the datasets.csv at `results_csv` (nothing is written)."""
    listed = listed_row(results_csv, record["dataset"])
    matches = listed is not None and (
        same_recipe(recipe_of(record), listed)
        and _close(listed["ref_min_score"], record["ref_min_score"])
        and _close(listed["ref_max_score"], record["ref_max_score"])
    )
    replay = record.get("replay") or {}
    identical = matches and same_stats(listed, record) and replay.get("identical_to_log_source") is not False
    return Verdict(listed, matches, identical)


def _differs(results_csv: Path, record: dict, listed: dict) -> str:
    """Why a build of the listed recipe has other data than the listed build (one sentence)."""
    replay = record.get("replay") or {}
    why = ("replaying the committed action log gave other data (another MuJoCo or gymnasium build)"
           if replay.get("actions_log") else
           "the SAC re-run did not reproduce the committed medium actor, so this is the replay of another "
           "training run; runs trained on it are left out of the offline report's table"
           if replay.get("reproduces_medium_policy") is False else
           f"most likely a build on another CPU type (this one: {record['machine']}); runs trained on it "
           "are reported as runs on a rebuild")
    return (f"the data differ from the build {rel(results_csv)} lists (return {record['return_mean']:.1f} "
            f"over {record['episodes']} episodes, listed {float(listed['return_mean']):.1f} over "
            f"{listed['episodes']}) although the policy, seed, steps and reference scores are the same: {why}.")


def describe(results_csv: Path, record: dict) -> str:
    """The verdict on a build in words, for a build that is not recorded: nothing is written under results/."""
    verdict, alias = compare(results_csv, record), record["dataset"]
    untouched = f"nothing written under {rel(results_csv.parent)}/"
    if verdict.identical:
        return (f"the same data as the build {rel(results_csv)} lists ({record['episodes']} episodes, return "
                f"{record['return_mean']:.1f}); {untouched}")
    if verdict.recipe_matches:
        return (f"{_differs(results_csv, record, verdict.listed)} The listed row stays; {untouched} (--record logs "
                "this build in builds.csv, --relist makes it the listed one).")
    what = "no build of it" if verdict.listed is None else "a build of another recipe or other reference scores"
    return f"{rel(results_csv)} lists {what}; {untouched} (--record lists this build: {build_command(alias)} --record)"


def list_build(results_csv: Path, record: dict) -> str:
    """Log a recipe build in builds.csv (beside datasets.csv) and list it in datasets.csv, unless datasets.csv
    already lists a build of the same recipe (policy file, seed, steps, reference scores) with other data:
    most likely a rebuild on another CPU type, or a medium-replay re-run that did not reproduce the medium
    actor. The listed build then stays; returns what was done."""
    verdict = compare(results_csv, record)
    replay = record.get("replay") or {}
    log_path = results_csv.with_name("builds.csv")
    matches, listed = verdict.recipe_matches, verdict.listed
    _append_log(log_path, {**record, "commit": record["code"].rsplit(" ", 1)[-1],
                           "listed_return_mean": listed["return_mean"] if matches else "",
                           "identical_to_listed": verdict.identical if matches else "",
                           "medium_policy_max_abs_diff": replay.get("medium_policy_max_abs_diff", ""),
                           "actions_log": replay.get("actions_log", ""),
                           "identical_to_log": replay.get("identical_to_log_source", "")})
    if matches and not verdict.identical:
        return f"{_differs(results_csv, record, listed)} The listed row stays; this build is logged in {rel(log_path)}."
    upsert_row(results_csv, record)
    return f"row written to {rel(results_csv)}; build logged in {rel(log_path)}"


def relist(alias: str, *, results_csv: Path = RESULTS_CSV, quiet: bool = False) -> dict:
    """Make the build of `alias` on disk the one results/datasets.csv lists, replacing the listed row: for a
    rebuild that gave other data (another CPU type, or a medium-replay re-run that did not reproduce the
    medium actor) and is to be benchmarked here. Runs recorded on the replaced build then leave the offline
    report's table (their rows stay in scores.csv); re-run them on this build."""
    path, record = on_disk_build(alias, "there is nothing to list")
    if not record.get("full_recipe"):
        raise RlzooError(f"the build of '{alias}' at {path} is not the full recipe (other steps, seed or env count), "
                         f"so it cannot be the listed one; build it again with {build_command(alias)} --force")
    results_csv = Path(results_csv)
    listed = listed_row(results_csv, alias)
    upsert_row(results_csv, record)
    if not quiet:
        was = (f" (it listed {listed['episodes']} episodes, return {float(listed['return_mean']):.1f})"
               if listed else "")
        print(f"[build_dataset] {alias}: {rel(results_csv)} now lists the build on disk, {record['episodes']} "
              f"episodes, return {record['return_mean']:.1f}, normalized {record['normalized_mean']:.1f}{was}; runs "
              f"recorded on the replaced build leave the offline report's table", flush=True)
    return record
