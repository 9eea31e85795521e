"""One dataset from its recipe to the Minari store: collect it (behaviour policy, SAC replay, or replay of its
action log), write it with its build record, and compare it with the build results/datasets.csv lists. Only
with `record_results` does a build write under results/ (see envs.listing)."""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path

import rlzoo
from envs.behaviours import Behaviour, make_behaviour
from envs.collect import Collected, collect, env_info
from envs.listing import RESULTS_CSV, describe, list_build
from envs.recipes import (
    RANDOM,
    RECIPE_ENVS,
    RECIPES,
    REPLAY,
    build_command,
    check_alias,
    parts,
    policy_records,
    unavailable,
)
from envs.references import REFS_PATH, build_references
from envs.replay_logs import action_log_path, replay_action_log
from envs.sac_replay import collect_replay
from envs.shared import ROOT, rel, say, sha256
from envs.store import stale_siblings, write_dataset
from rlzoo.datasets import COMPOSITES, datasets_root, local_id, normalize, on_disk, split_alias
from rlzoo.errors import RlzooError
from rlzoo.provenance import commit, cpu_signature


@dataclass
class Collection:
    """What was collected for one build, and how."""

    got: Collected
    behaviour: Behaviour
    steps: int
    seed: int
    full: bool  # the recipe's own steps, seed and env count: the only build results/datasets.csv may list
    replay: dict | None = None  # how a medium-replay was made (None for a policy or random recipe)
    from_log: bool = False  # a medium-replay rebuilt from its committed action log


def _replay_name(info: dict, reproduced: bool | None, steps: int, seed: int) -> str:
    """The behaviour name of a medium-replay: whose replay it provably is."""
    medium = info["medium_policy"]
    return {True: f"replay of the SAC run that trained {medium}",
            False: f"replay of a re-run of the SAC training of {medium} (same command and seed; its actor at "
                   f"step {info['medium_step']} differs from that file)",
            None: f"replay of a SAC run with the training settings of {medium} (seed {seed}, "
                  f"{steps:,} steps; not compared with that file)"}[reproduced]


def _from_log(alias: str, env_id: str, quiet: bool) -> tuple[Collected, dict]:
    """Replay the committed action log of `alias` (minutes), checked against the committed medium policy."""
    say(f"{alias}: replaying the actions of {rel(action_log_path(alias))} on {env_id} ...", quiet)
    entry = policy_records().get(f"{split_alias(alias)[0]}-medium", {})
    medium_file = ROOT / entry["file"] if entry.get("file") else None
    medium_sha = sha256(medium_file) if medium_file is not None and medium_file.is_file() else None
    got, info = replay_action_log(alias, env_id, medium_sha, progress=not quiet)
    if not info["identical_to_log_source"]:
        say(f"WARNING: the replay of {rel(action_log_path(alias))} ended every episode where the recording did, "
            f"but its data are not bit-identical to the build the log was saved from "
            f"({info['log_source']['machine']}): the MuJoCo or gymnasium build differs slightly", quiet)
    return got, info


def _replay_data(alias: str, *, steps: int | None, seed: int | None, quiet: bool, replay_from: Path | None,
                 retrain: bool) -> Collection:
    """A medium-replay: the committed action log replayed, or the SAC training run's replay (--retrain,
    --replay-from, or another seed or length)."""
    task, env_id = split_alias(alias)[0], RECIPES[alias].env_id
    from_log = (replay_from is None and not retrain and steps is None and seed is None
                and action_log_path(alias).is_file())
    if from_log:
        got, info = _from_log(alias, env_id, quiet)
    else:
        say(f"{alias}: reading the replay buffer of {replay_from} ..." if replay_from is not None else
            f"{alias}: re-running the SAC training of {task}-medium's policy to regenerate its replay buffer ...",
            quiet)
        got, info = collect_replay(task, env_id, steps=steps, seed=seed, quiet=quiet, replay_from=replay_from)
    steps_n, seed_n, medium = int(got.lengths.sum()), info["seed"], info["medium_policy"]
    # Read from the training run itself (--replay-from checks its actor) or a re-run that reproduced the actor:
    # that run's replay. A re-run with another actor: another training run's. A re-run with another seed or
    # length is not compared with the committed actor.
    reproduced = info.get("reproduces_medium_policy", True if replay_from is not None else None)
    behaviour = Behaviour(_replay_name(info, reproduced, steps_n, seed_n), None,
                          sha256=sha256(ROOT / medium) if medium else None, meta=info)
    if reproduced is False and not from_log:
        say(f"WARNING: the re-run's actor at step {info['medium_step']} differs from {medium} (max abs diff "
            f"{info['medium_policy_max_abs_diff']:.3g}; other code, library versions or machine): the replay "
            "follows the same recipe but is not bit-identical to that run's", quiet)
    return Collection(got, behaviour, steps_n, seed_n, steps is None and seed is None, info, from_log)


def _policy_data(alias: str, behaviour: Behaviour, *, steps: int | None, seed: int | None, num_envs: int,
                 quiet: bool) -> Collection:
    """A random or policy recipe: `behaviour` stepped in `num_envs` envs, with a progress bar."""
    recipe = RECIPES[alias]
    steps_n = recipe.steps if steps is None else int(steps)
    seed_n = recipe.seed if seed is None else int(seed)
    full = steps_n == recipe.steps and seed_n == recipe.seed and num_envs == RECIPE_ENVS
    say(f"{alias}: collecting {steps_n:,} transitions on {recipe.env_id} with {behaviour.name} ({num_envs} envs, "
        f"seed {seed_n}) ...", quiet)
    got = collect(recipe.env_id, behaviour, seed=seed_n, num_envs=num_envs, steps=steps_n,
                  progress=None if quiet else alias)
    return Collection(got, behaviour, steps_n, seed_n, full)


def command_line(alias: str, c: Collection, steps: int | None, seed: int | None, num_envs: int) -> str:
    """The command that repeats this build, as the build record keeps it."""
    return (build_command(alias) + ("" if steps is None else f" --steps {c.steps}")
            + ("" if seed is None else f" --seed {c.seed}")
            + ("" if num_envs == RECIPE_ENVS else f" --num-envs {num_envs}"))


def make_record(alias: str, c: Collection, refs: dict, *, cmd: str, num_envs: int, collect_s: float) -> dict:
    """The full build record (rlzoo_build.json): what was built, from what, where, and its returns."""
    import gymnasium
    import minari
    import mujoco

    task, kind = split_alias(alias)
    rets, replay = c.got.complete_returns, c.replay
    ref_min, ref_max = float(refs["ref_min_score"]), float(refs["ref_max_score"])
    return {
        "dataset": alias, "dataset_id": local_id(task, kind), "kind": kind, "source": "local",
        "env_id": RECIPES[alias].env_id, "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__,
        "minari": minari.__version__, "rlzoo": rlzoo.__version__,
        # the data are bit-identical only on a CPU of the same signature (see rlzoo.provenance.cpu_signature)
        "machine": cpu_signature(),
        "xla_flags": os.environ.get("XLA_FLAGS", "").strip(),  # e.g. --xla_cpu_max_isa changes the data too
        "code": f"envs.build_dataset at rlzoo commit {commit()}",
        "policy": c.behaviour.name, "policy_sha256": c.behaviour.sha256, "policy_meta": c.behaviour.meta,
        "seed": c.seed, "env_seeds": f"{c.seed}" + ("" if replay else "+i for env i") + " (first reset only)",
        "num_envs": 1 if replay else num_envs, "steps": c.steps, "full_recipe": c.full,
        "recipe_steps": replay["medium_step"] if replay else RECIPES[alias].steps, "replay": replay,
        "episodes": len(c.got.lengths), "episodes_cut_by_budget": int(c.got.cut.sum()),
        "episodes_terminated": int(c.got.terminated.sum()),
        "return_mean": float(rets.mean()), "return_std": float(rets.std()),
        "return_min": float(rets.min()), "return_max": float(rets.max()),
        "returns_over": "episodes that ended by themselves (termination or time limit), not those cut by the budget",
        "ref_min_score": ref_min, "ref_max_score": ref_max,
        "normalized_mean": float(normalize(rets.mean(), ref_min, ref_max)),
        "ref_min_source": refs.get("ref_min_source"), "ref_max_source": refs.get("ref_max_source"),
        "ref_max_policy_sha256": refs.get("ref_max_policy_sha256"),
        "build_command": cmd, "collect_seconds": round(collect_s, 2),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def description(c: Collection, record: dict) -> str:
    """The Minari description of a build: locally built, from what, and the command that repeats it."""
    if c.replay:
        policy = (f"every transition of the replay buffer of the SAC training run that produced "
                  f"{c.replay['medium_policy']}, in order, up to env step {c.steps} ({c.replay['sac_command']})"
                  + (f", regenerated by replaying its actions from {c.replay['actions_log']}" if c.from_log else ""))
    elif c.behaviour.name == RANDOM:
        policy = "uniform random actions"
    else:
        policy = (f"the SAC actor {c.behaviour.name} (sha256 {c.behaviour.sha256[:12]}), actions sampled "
                  "a = tanh(mean + std * noise)")
    return (f"LOCALLY BUILT stand-in following the D4RL recipe, not the official D4RL/Minari data. {record['kind']} "
            f"dataset on {record['env_id']}: {c.steps} transitions from {policy}"
            + ("" if c.replay else f", {record['num_envs']} envs stepped in lockstep")
            + f", seed {c.seed}. ref_min_score: {record['ref_min_source']}; ref_max_score: "
            f"{record['ref_max_source']}. Built with: {record['build_command']} ({record['code']}).")


def _check_buildable(alias: str, num_envs: int) -> None:
    if num_envs < 1:
        raise RlzooError(f"--num-envs must be at least 1, got {num_envs}")
    reason = unavailable(alias)
    if reason is not None:
        raise RlzooError(reason)


def build(alias: str, *, force: bool = False, steps: int | None = None, seed: int | None = None,
          num_envs: int = RECIPE_ENVS, force_refs: bool = False, refs_path: Path = REFS_PATH,
          results_csv: Path | None = RESULTS_CSV, record_results: bool = False, quiet: bool = False,
          replay_from: Path | None = None, retrain: bool = False) -> dict | None:
    """Build one dataset into the Minari store; returns its build record, or None when it was already on disk
    (and not `force`). A full-recipe build is compared with the build `results_csv` lists; with `record_results`
    it is also logged in builds.csv beside it and listed there (see listing.list_build)."""
    check_alias(alias)
    task, kind = split_alias(alias)
    if kind in COMPOSITES:
        for part in parts(alias):
            build(part, force=force, steps=steps, seed=seed, num_envs=num_envs, force_refs=force_refs,
                  refs_path=refs_path, results_csv=results_csv, record_results=record_results, quiet=quiet,
                  replay_from=replay_from, retrain=retrain)
        return None
    recipe, dataset_id = RECIPES[alias], local_id(task, kind)
    if on_disk(dataset_id) and not force:
        say(f"{alias}: already built at {datasets_root() / dataset_id}; skipped (rebuild with "
            f"{build_command(alias)} --force)", quiet)
        return None
    _check_buildable(alias, num_envs)
    replay = recipe.behaviour == REPLAY
    behaviour = None if replay else make_behaviour(alias, *env_info(recipe.env_id))
    refs = build_references(task, Path(refs_path), force_refs, quiet)
    for other in stale_siblings(task, kind, refs):
        say(f"WARNING: {other} on disk was built with other reference scores than {alias} now gets, so composites "
            f"such as {task}-medium-expert will not load; rebuild it: {build_command(other)} --force", quiet)
    t0 = time.perf_counter()
    if replay:
        c = _replay_data(alias, steps=steps, seed=seed, quiet=quiet, replay_from=replay_from, retrain=retrain)
    else:
        c = _policy_data(alias, behaviour, steps=steps, seed=seed, num_envs=num_envs, quiet=quiet)
    collect_s = time.perf_counter() - t0
    assert int(c.got.lengths.sum()) == c.steps, (c.got.lengths.sum(), c.steps)
    record = make_record(alias, c, refs, cmd=command_line(alias, c, steps, seed, num_envs), num_envs=num_envs,
                         collect_s=collect_s)
    t1 = time.perf_counter()
    name = c.behaviour.name
    algorithm = "uniform random policy" if name == RANDOM else f"SAC (algorithms/sac.py), {name}"
    path = write_dataset(dataset_id, recipe.env_id, c.got, ref_min=record["ref_min_score"],
                         ref_max=record["ref_max_score"], description=description(c, record),
                         algorithm_name=algorithm, record=record)
    say(f"{alias}: wrote {dataset_id} to {path} ({record['episodes']} episodes, return {record['return_mean']:.1f} "
        f"+- {record['return_std']:.1f}, normalized {record['normalized_mean']:.1f}; collect {collect_s:.0f}s, "
        f"write {time.perf_counter() - t1:.0f}s)", quiet)
    if c.full and results_csv is not None:
        results_csv = Path(results_csv)
        say(f"{alias}: {list_build(results_csv, record) if record_results else describe(results_csv, record)}", quiet)
    elif record_results:
        say(f"{alias}: not the recipe's own steps, seed and env count, so not written to results/", quiet)
    return record
