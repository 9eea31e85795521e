"""Reference scores of a task, as Minari and D4RL normalize: ref_min_score is the uniform random policy's mean
return, ref_max_score the expert policy's (envs/policies/<task>-expert.npz, deterministic actions) or, while that
file does not exist, D4RL's published expert score. Computed once per task and cached in
envs/reference_scores.json; `refresh_refs` gives a build on disk its task's current ones."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from envs import recipes
from envs.behaviours import policy_behaviour, random_behaviour
from envs.collect import collect, env_info
from envs.listing import RESULTS_CSV, describe, list_build
from envs.shared import ROOT, read_json, rel, say, sha256, write_atomic
from envs.store import on_disk_build, rewrite_record
from rlzoo.datasets import MUJOCO_ENVS, normalize, split_alias

REFS_PATH = ROOT / "envs" / "reference_scores.json"
# Episodes with seeds REF_SEED + i, REF_ENVS envs in lockstep (independent of --num-envs, so the numbers stay).
REF_EPISODES = 100
REF_SEED = 1_000_000
REF_ENVS = 20
# D4RL's published reference scores (d4rl/infos.py, MuJoCo v2 tasks), used for ref_max_score while
# envs/policies/<task>-expert.npz does not exist; the random ones are kept for comparison only.
D4RL_REF_MAX = {"halfcheetah": 12135.0, "hopper": 3234.3, "walker2d": 4592.3, "ant": 3879.7}
D4RL_REF_MIN = {"halfcheetah": -280.178953, "hopper": -20.272305, "walker2d": 1.629008, "ant": -325.6}

_FORCED: set[str] = set()  # tasks whose references this process recomputed already (--force-refs)


def _random_reference(task: str, env_id: str, act_dim: int, quiet: bool) -> dict:
    say(f"{task}: ref_min_score = mean return of the uniform random policy over {REF_EPISODES} episodes ...", quiet)
    got = collect(env_id, random_behaviour(act_dim), seed=REF_SEED, num_envs=REF_ENVS, episodes=REF_EPISODES,
                  record=False, progress=None if quiet else f"{task} random reference")
    return {"ref_min_score": float(got.returns.mean()), "ref_min_std": float(got.returns.std()),
            "ref_min_source": (f"uniform random policy, mean over {REF_EPISODES} episodes (env seeds {REF_SEED}+i, "
                               f"{REF_ENVS} envs)"),
            "ref_min_episodes": REF_EPISODES}


def _expert_reference(task: str, env_id: str, expert: Path, expert_sha: str | None, quiet: bool) -> dict:
    if expert_sha is None:
        return {"ref_max_score": D4RL_REF_MAX[task], "ref_max_std": None,
                "ref_max_source": (f"published D4RL reference expert score for {task} (d4rl/infos.py REF_MAX_SCORE, "
                                   f"MuJoCo v2), used because {rel(expert)} does not exist"),
                "ref_max_policy": None, "ref_max_policy_sha256": None, "ref_max_episodes": None}
    say(f"{task}: ref_max_score = mean return of {rel(expert)} (deterministic actions tanh(mean)) over "
        f"{REF_EPISODES} episodes ...", quiet)
    policy = policy_behaviour(expert, *env_info(env_id), deterministic=True)
    got = collect(env_id, policy, seed=REF_SEED, num_envs=REF_ENVS, episodes=REF_EPISODES, record=False,
                  progress=None if quiet else f"{task} expert reference")
    return {"ref_max_score": float(got.returns.mean()), "ref_max_std": float(got.returns.std()),
            "ref_max_source": (f"expert policy {rel(expert)}, deterministic actions, mean over {REF_EPISODES} "
                               f"episodes (env seeds {REF_SEED}+i, {REF_ENVS} envs)"),
            "ref_max_policy": rel(expert), "ref_max_policy_sha256": expert_sha, "ref_max_episodes": REF_EPISODES}


def reference_scores(task: str, refs_path: Path = REFS_PATH, force: bool = False, quiet: bool = False) -> dict:
    """ref_min_score / ref_max_score of `task` and where they come from, cached in `refs_path`. The cache entry
    is recomputed when missing, with `force`, or when the expert policy file appeared, disappeared or changed."""
    import gymnasium
    import mujoco

    env_id = MUJOCO_ENVS[task]
    cache = read_json(refs_path)
    entry = dict(cache.get(task) or {})
    if entry.get("env_id") != env_id:
        entry = {}
    expert = recipes.POLICY_DIR / f"{task}-expert.npz"
    expert_sha = sha256(expert) if expert.is_file() else None
    changed = False
    if force or "ref_min_score" not in entry:
        entry.update(_random_reference(task, env_id, env_info(env_id)[1], quiet))
        changed = True
    if force or "ref_max_score" not in entry or entry.get("ref_max_policy_sha256") != expert_sha:
        entry.update(_expert_reference(task, env_id, expert, expert_sha, quiet))
        changed = True
    if changed:
        entry.update(env_id=env_id, d4rl_ref_min_score=D4RL_REF_MIN[task], d4rl_ref_max_score=D4RL_REF_MAX[task],
                     gymnasium=gymnasium.__version__, mujoco=mujoco.__version__,
                     date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        cache[task] = dict(sorted(entry.items()))
        write_atomic(refs_path, json.dumps(dict(sorted(cache.items())), indent=2) + "\n")
    return entry


def build_references(task: str, refs_path: Path, force: bool, quiet: bool) -> dict:
    """The reference scores a build gets; `force` (--force-refs) recomputes a task's once per process, so the
    parts of a composite and several datasets of one task share them."""
    entry = reference_scores(task, Path(refs_path), force=force and task not in _FORCED, quiet=quiet)
    _FORCED.add(task)
    return entry


def refresh_refs(alias: str, *, refs_path: Path = REFS_PATH, results_csv: Path | None = RESULTS_CSV,
                 record_results: bool = False, quiet: bool = False) -> dict:
    """Give a dataset already on disk the task's current reference scores (e.g. after its expert policy was
    added) without collecting it again: its Minari metadata and rlzoo_build.json; with `record_results`, also
    its results rows (see listing.list_build), else only the verdict on them is printed."""
    path, record = on_disk_build(alias, "there are no reference scores to refresh")
    refs = reference_scores(split_alias(alias)[0], Path(refs_path), quiet=quiet)
    ref_min, ref_max = float(refs["ref_min_score"]), float(refs["ref_max_score"])
    record.update(
        ref_min_score=ref_min, ref_max_score=ref_max, ref_min_source=refs.get("ref_min_source"),
        ref_max_source=refs.get("ref_max_source"), ref_max_policy_sha256=refs.get("ref_max_policy_sha256"),
        normalized_mean=float(normalize(record["return_mean"], ref_min, ref_max)),
    )
    rewrite_record(path, record)
    say(f"{alias}: reference scores now {ref_min:.1f} / {ref_max:.1f}, normalized {record['normalized_mean']:.1f}",
        quiet)
    if record.get("full_recipe") and results_csv is not None:
        results_csv = Path(results_csv)
        say(f"{alias}: {list_build(results_csv, record) if record_results else describe(results_csv, record)}", quiet)
    return record
