"""Build D4RL-style offline datasets locally, in the Minari format, on Gymnasium v5 MuJoCo. From the
repository root:

    python -m envs.build_dataset halfcheetah-random hopper-random      # two datasets
    python -m envs.build_dataset all                                   # every recipe whose policy exists
    python -m envs.build_dataset halfcheetah-medium --force            # rebuild one
    python -m envs.build_dataset halfcheetah-medium --record           # ... and log/list it in results/
    python -m envs.build_dataset halfcheetah-medium --relist           # list the build on disk in results/
    python -m envs.build_dataset hopper-medium-replay --save-actions   # commit-able log of the listed replay

A build writes only to the local Minari store ($MINARI_DATASETS_PATH, default ~/.minari/datasets), as
`rlzoo-local/<task>/<kind>-v0` with its build record `rlzoo_build.json`, and prints how it compares with the
build results/datasets.csv lists; --record also logs it in results/builds.csv and lists it (a maintainer's
step). What each dataset is: envs/recipes.py; how it is collected: envs/collect.py (behaviour policies in
envs/behaviours.py), envs/sac_replay.py and envs/replay_logs.py (medium-replay); reference scores:
envs/references.py; the listed build: envs/listing.py. medium-expert needs no recipe of its own:
`rlzoo.datasets` concatenates medium + expert when loading, so building it builds its two parts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import tyro

from envs import listing, pointmaze
from envs.builder import build
from envs.recipes import BUILD_COMMAND, RECIPE_ENVS, RECIPES, expand, parts, unavailable
from envs.references import refresh_refs
from envs.replay_logs import save_action_log
from envs.shared import say
from rlzoo.cli import run_cli
from rlzoo.datasets import split_alias
from rlzoo.errors import RlzooError


@dataclass
class Config:
    datasets: Annotated[tuple[str, ...], tyro.conf.Positional]
    """D4RL-style aliases <task>-<kind> (halfcheetah-random, halfcheetah-medium, ...), 'all', or the stitching
    task pointmaze-stitch (envs/pointmaze.py)."""
    force: bool = False
    """Rebuild datasets that are already on disk."""
    steps: int | None = None
    """Transitions per dataset (default: the recipe's, 1M). Such a build is never listed in results/."""
    seed: int | None = None
    """Seed (default: the recipe's): env i is reset with seed + i, the JAX key comes from it."""
    num_envs: int = RECIPE_ENVS
    """Environments stepped in lockstep, one jitted policy call per step for all of them (other than the
    recipe's 20, a build is never listed in results/)."""
    record: bool = False
    """Write the build into results/: log it in results/builds.csv and, unless that file lists another build
    of the same recipe with other data, list it in results/datasets.csv. Without it a build writes only to
    the Minari store and prints how it compares with the listed build. With --refs-only: update the row."""
    force_refs: bool = False
    """Recompute the cached reference scores in envs/reference_scores.json."""
    replay_from: Path | None = None
    """For <task>-medium-replay: read the replay buffer of the SAC run folder that trained <task>-medium's
    policy (its replay.npz or newest checkpoint; checked against envs/policies/policies.json) instead of
    re-running that training. The data are the same; it saves the re-run's time."""
    retrain: bool = False
    """For <task>-medium-replay: re-run the SAC training (hours) even when its action log envs/replays/<name>.npz
    is committed; without this flag the log is replayed (minutes) and gives the listed build's data."""
    refs_only: bool = False
    """Do not collect: give the named datasets, already on disk, their task's current reference scores
    (after an expert policy was added to envs/policies/)."""
    relist: bool = False
    """Do not collect: make the named datasets' builds on disk the ones results/datasets.csv lists, replacing
    the listed rows (after a rebuild here gave other data than the listed build; the runs recorded on that
    build leave the offline report's table)."""
    save_actions: bool = False
    """Do not collect: save the listed build on disk of each named <task>-medium-replay as its action log
    envs/replays/<name>.npz (its actions and first reset seed), from which later builds replay it in minutes."""


def check_options(config: Config, names: list[str]) -> None:
    """Refuse combinations of options that do not go together, each with a one-paragraph reason."""
    replays = [a for a in names if split_alias(a) and split_alias(a)[1] == "medium-replay"]
    if config.replay_from is not None and (len(replays) != 1 or len(names) != 1 or "all" in config.datasets):
        raise RlzooError(
            f"--replay-from {config.replay_from} reads one SAC run, so it goes with exactly one <task>-medium-replay "
            f"dataset and nothing else (got: {', '.join(config.datasets)}). Build the others in a separate command."
        )
    if config.refs_only and config.relist:
        raise RlzooError("--refs-only and --relist are separate steps: refresh the reference scores first, then "
                         "relist")
    if config.save_actions and (config.refs_only or config.relist):
        raise RlzooError("--save-actions is a separate step: relist (or refresh the reference scores) first, then "
                         "save the actions of the listed build")
    if config.retrain and config.replay_from is not None:
        raise RlzooError("--retrain re-runs the SAC training and --replay-from reads a finished run: give one")


def main(config: Config) -> list[dict]:
    if not config.datasets:
        raise RlzooError(f"name the datasets to build, e.g. `{BUILD_COMMAND} halfcheetah-random`, or `all`; "
                         f"recipes exist for: {', '.join(sorted(RECIPES))}")
    if pointmaze.ALIAS in config.datasets:  # the stitching task: its own scripted recipe (envs/pointmaze.py)
        record = pointmaze.build(force=config.force)
        if record is not None and config.record:
            pointmaze.list_build(record)
        rest = tuple(d for d in config.datasets if d != pointmaze.ALIAS)
        return ([record] if record else []) + (main(replace(config, datasets=rest)) if rest else [])
    names = expand(config.datasets)
    check_options(config, names)
    if config.save_actions:
        return [{"dataset": alias, "action_log": str(save_action_log(alias, results_csv=listing.RESULTS_CSV))}
                for alias in names]
    if config.refs_only:
        return [refresh_refs(part, results_csv=listing.RESULTS_CSV, record_results=config.record)
                for alias in names for part in parts(alias)]
    if config.relist:
        return [listing.relist(part, results_csv=listing.RESULTS_CSV) for alias in names for part in parts(alias)]
    if "all" in config.datasets:
        for alias in RECIPES:
            if alias not in names:
                say(f"skipping {alias}: {unavailable(alias)}")
    records = [build(alias, force=config.force, steps=config.steps, seed=config.seed, num_envs=config.num_envs,
                     force_refs=config.force_refs, results_csv=listing.RESULTS_CSV, record_results=config.record,
                     replay_from=config.replay_from, retrain=config.retrain) for alias in names]
    return [r for r in records if r is not None]


if __name__ == "__main__":
    run_cli(main, Config)
