"""Build D4RL-style offline datasets locally, in the Minari format, on Gymnasium v5 MuJoCo.

    python envs/build_dataset.py halfcheetah-random hopper-random      # two datasets
    python envs/build_dataset.py all                                   # every recipe whose policy exists
    python envs/build_dataset.py halfcheetah-medium --force            # rebuild one
    python envs/build_dataset.py halfcheetah-medium --relist           # list the build on disk in results/
    python envs/build_dataset.py hopper-medium-replay --save-actions   # commit-able log of the listed replay

A recipe (the table `RECIPES` below) names the environment, the behaviour policy, the number of
transitions and the seed. The behaviour policy is either `random` (uniform random actions) or a SAC actor
saved with `rlzoo.checkpoint.save_params` under envs/policies/ (trained with algorithms/sac.py); as in
D4RL, its actions are *sampled*: a = tanh(mean + std * noise). `E` environments (`--num-envs`) are
stepped in lockstep with one jitted policy call per step; every env's episodes become Minari
`EpisodeBuffer`s, with true terminations and truncations (time limit, or the cut at the end of the
step budget) kept apart. The dataset is written atomically into the local Minari store
($MINARI_DATASETS_PATH, default ~/.minari/datasets) as `rlzoo-local/<task>/<kind>-v0`, together with
`rlzoo_build.json`, the full build record. Reference scores (random policy; expert policy
envs/policies/<task>-expert.npz, or D4RL's published expert score while that file does not exist) are
computed once per task and cached in envs/reference_scores.json. A full-recipe build also upserts its
row of results/datasets.csv.

medium-replay is the replay buffer of the SAC run that trained the medium policy. It is rebuilt from its
committed action log envs/replays/<name>.npz (minutes; checked bit for bit against the listed build), or,
without one or with --retrain, by re-running that training (hours; see `collect_replay`).

medium-expert needs no recipe of its own: `rlzoo.datasets` concatenates medium + expert when loading,
so building it builds its two parts.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

import rlzoo
from rlzoo.datasets import (
    BUILD_SCRIPT,
    COMPOSITES,
    KINDS,
    MUJOCO_ENVS,
    aliases,
    build_command,
    complete_returns,
    datasets_root,
    local_id,
    normalize,
    on_disk,
    recipe_of,
    same_recipe,
    split_alias,
)
from rlzoo.errors import RlzooError, close_matches, run_cli

ROOT = Path(__file__).resolve().parent.parent
POLICY_DIR = ROOT / "envs" / "policies"
REFS_PATH = ROOT / "envs" / "reference_scores.json"
POLICIES_JSON = "policies.json"  # in POLICY_DIR: how each behaviour policy was trained and picked
SAC_SCRIPT = ROOT / "algorithms" / "sac.py"
RESULTS_CSV = ROOT / "results" / "datasets.csv"
STAGING = ".rlzoo-staging"  # hidden folder of the Minari store where datasets are built before the rename

RANDOM = "random"  # behaviour: uniform random actions
REPLAY = "replay"  # behaviour: the replay buffer of the SAC run that trained the medium policy

# Reference scores: random policy over REF_EPISODES episodes (seeds REF_SEED + i, REF_ENVS envs in
# lockstep, independent of --num-envs so the numbers do not move), expert policy likewise if it exists.
REF_EPISODES = 100
REF_SEED = 1_000_000
REF_ENVS = 20
RECIPE_ENVS = 20  # environments a recipe's dataset is collected with (they change the data; see `build`)
# D4RL's published reference scores (d4rl/infos.py, MuJoCo v2 tasks), used for ref_max_score while
# envs/policies/<task>-expert.npz does not exist; the random ones are kept for comparison only.
D4RL_REF_MAX = {"halfcheetah": 12135.0, "hopper": 3234.3, "walker2d": 4592.3, "ant": 3879.7}
D4RL_REF_MIN = {"halfcheetah": -280.178953, "hopper": -20.272305, "walker2d": 1.629008, "ant": -325.6}
DATASET_COLUMNS = [
    "dataset",
    "env_id",
    "kind",
    "source",
    "policy",
    "policy_sha256",
    "seed",
    "episodes",
    "steps",
    "return_mean",
    "return_std",
    "ref_min_score",
    "ref_max_score",
    "normalized_mean",
]


@dataclass(frozen=True)
class Recipe:
    """How one dataset is made (the D4RL recipe: 1M transitions of one behaviour policy)."""

    env_id: str
    behaviour: str  # RANDOM, REPLAY, or a save_params file relative to the repository root
    steps: int = 1_000_000
    seed: int = 0


def _recipes() -> dict[str, Recipe]:
    # One row per dataset; medium-expert needs no row (it is built as its parts, medium + expert).
    # medium-replay (REPLAY) is as long as the SAC run was when the medium policy was taken: `steps` unused.
    table = {}
    for task, env_id in MUJOCO_ENVS.items():
        table[f"{task}-random"] = Recipe(env_id, RANDOM)
        table[f"{task}-medium"] = Recipe(env_id, f"{task}-medium.npz")  # files in POLICY_DIR
        table[f"{task}-expert"] = Recipe(env_id, f"{task}-expert.npz")
        table[f"{task}-medium-replay"] = Recipe(env_id, REPLAY, steps=0)
    return table


RECIPES: dict[str, Recipe] = _recipes()


# ---------------------------------------------------------------- behaviour policies
@dataclass
class Behaviour:
    """A jitted batch policy `act(params, key, t, obs[E, obs_dim]) -> actions[E, act_dim] in [-1, 1]`."""

    name: str  # "random" or the policy file relative to the repository root
    act: Callable
    params: object = None
    sha256: str | None = None
    meta: dict = field(default_factory=dict)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def random_behaviour(act_dim: int) -> Behaviour:
    import jax

    @jax.jit
    def act(params, key, t, obs):
        return jax.random.uniform(jax.random.fold_in(key, t), (obs.shape[0], act_dim), minval=-1.0, maxval=1.0)

    return Behaviour(RANDOM, act)


def policy_behaviour(
    path: Path, obs_dim: int, act_dim: int, deterministic: bool = False, seed_index: int = 0
) -> Behaviour:
    """A SAC `TanhGaussianActor` from a save_params file. Files written during training have a leading
    seed axis on every parameter (seed `seed_index` is taken); hidden sizes come from the file's meta or,
    when it is empty, from the parameter shapes."""
    import jax
    import jax.numpy as jnp

    from rlzoo.checkpoint import load_params
    from rlzoo.networks import TanhGaussianActor, sample_tanh_gaussian

    params, meta = load_params(path)
    try:
        mlp = params["params"]["MLP_0"]
        hidden = meta.get("hidden_dims") or [mlp[f"Dense_{i}"]["kernel"].shape[-1] for i in range(len(mlp))]
    except (KeyError, TypeError) as err:
        raise RlzooError(
            f"{path} does not hold TanhGaussianActor parameters (no {err} entry); it must be an "
            "actor saved by algorithms/sac.py (policy.npz or policies/step_*.npz)"
        ) from err
    actor = TanhGaussianActor(act_dim, tuple(int(h) for h in hidden))
    template = jax.eval_shape(actor.init, jax.random.key(0), jnp.zeros((1, obs_dim), jnp.float32))

    def pick(path_, like, leaf):
        leaf = np.asarray(leaf, np.float32)
        if leaf.shape == like.shape:
            return leaf
        if leaf.shape[1:] == like.shape and seed_index < leaf.shape[0]:
            return leaf[seed_index]
        name = "/".join(str(getattr(k, "key", k)) for k in path_)
        raise RlzooError(
            f"{path}: parameter {name} has shape {leaf.shape}, expected {like.shape} (or with a "
            f"leading seed axis holding seed {seed_index}) for a TanhGaussianActor({act_dim}, "
            f"{tuple(hidden)}) on observations of size {obs_dim}; is it a policy for another env?"
        )

    if jax.tree_util.tree_structure(template) != jax.tree_util.tree_structure(params):
        raise RlzooError(
            f"{path} does not have the layout of a TanhGaussianActor{tuple(hidden)}; it must be an "
            "actor saved by algorithms/sac.py"
        )
    params = jax.tree_util.tree_map_with_path(pick, template, params)

    @jax.jit
    def act(params, key, t, obs):
        mean, log_std = actor.apply(params, obs)
        if deterministic:
            return jnp.tanh(mean)
        return sample_tanh_gaussian(jax.random.fold_in(key, t), mean, log_std)[0]

    return Behaviour(_rel(path), act, params, sha256(path), meta)


def _policy_path(behaviour: str) -> Path:
    """A recipe's policy file: a name in POLICY_DIR (envs/policies/), or an absolute path."""
    return POLICY_DIR / behaviour


def unavailable(alias: str) -> str | None:
    """Why `alias` cannot be built now (one paragraph), or None when it can."""
    recipe = RECIPES[alias]
    if recipe.behaviour == RANDOM:
        return None
    if recipe.behaviour == REPLAY:
        task = split_alias(alias)[0]
        entry = policy_records().get(f"{task}-medium", {})
        if "sac_config" not in entry or "step" not in entry:
            return (
                f"'{alias}' is the replay buffer of the SAC run that trained {task}-medium's behaviour policy, "
                "up to the step where that policy was taken (the D4RL recipe). The builder regenerates it by "
                "re-running that training with algorithms/sac.py, so it needs the run's configuration and the "
                f"step in {_rel(POLICY_DIR / POLICIES_JSON)} (entry '{task}-medium'). Write it by picking the "
                f"policies from a finished SAC run: python envs/pick_policies.py --task {task} --run-dir "
                "<SAC run directory>"
            )
        return None
    path = _policy_path(recipe.behaviour)
    if not path.is_file():
        task, kind = split_alias(alias)
        level = {"medium": "about one third of the expert's return", "expert": "fully trained"}.get(kind, kind)
        return (
            f"the behaviour policy of '{alias}' is missing: {_rel(path)} does not exist. It is a SAC actor "
            f"({level}) from a SAC run trained with `python algorithms/sac.py --env {recipe.env_id} --save-policy-"
            f"every 10000` (1M steps, the D4RL recipe); when that run has finished, pick its expert and medium "
            f"policies with `python envs/pick_policies.py --task {task} --run-dir <SAC run directory>` and run "
            "this command again."
        )
    return None


def make_behaviour(alias: str, obs_dim: int, act_dim: int) -> Behaviour:
    """The behaviour of a random or policy recipe (the caller has checked `unavailable(alias)`)."""
    recipe = RECIPES[alias]
    if recipe.behaviour == RANDOM:
        return random_behaviour(act_dim)
    return policy_behaviour(_policy_path(recipe.behaviour), obs_dim, act_dim)


# ---------------------------------------------------------------- collection
@dataclass
class Collected:
    episodes: list  # minari EpisodeBuffers (empty when not recorded)
    returns: np.ndarray  # undiscounted return of every episode, in the order of `episodes`
    lengths: np.ndarray
    cut: np.ndarray  # True where the episode was cut by the step budget (not a natural end)
    terminated: np.ndarray  # True where the episode ended in a true termination

    @property
    def complete_returns(self) -> np.ndarray:
        """Returns of the episodes that ended by themselves; all of them if none did (a tiny budget)."""
        return complete_returns(self.returns, ~self.cut)


def env_info(env_id: str) -> tuple[int, int]:
    import gymnasium as gym

    env = gym.make(env_id)
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return dims


def collect(
    env_id: str,
    behaviour: Behaviour,
    *,
    seed: int,
    num_envs: int,
    steps: int | None = None,
    episodes: int | None = None,
    record: bool = True,
) -> Collected:
    """Run `behaviour` in `num_envs` envs (env i reset with seed + i, JAX key from `seed`) in lockstep until
    exactly `steps` transitions, or `episodes` episodes, are collected in total (split evenly over the
    envs). In step mode, an episode still running when its env's share is used up is cut there and marked
    truncated."""
    import gymnasium as gym
    import jax
    from minari.data_collector import EpisodeBuffer

    if (steps is None) == (episodes is None):
        raise ValueError("give exactly one of steps and episodes")
    total = steps if steps is not None else episodes
    if total <= 0:
        raise RlzooError(f"the number of steps/episodes must be positive, got {total}")
    n = max(1, min(num_envs, total))
    quota = [total // n + (i < total % n) for i in range(n)]
    envs = [gym.make(env_id) for _ in range(n)]
    space = envs[0].action_space
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    key = jax.random.key(seed)
    counted = [0] * n
    active = [True] * n
    # The episode running in each env: [observations, actions, rewards, terminations, truncations, seed].
    current = [[[obs[i]], [], [], [], [], seed + i] for i in range(n)]
    buffers, returns, lengths, cut, terminated = [], [], [], [], []

    def finish(i: int, was_cut: bool) -> None:
        o, a, r, te, tr, ep_seed = current[i]
        if was_cut:
            tr[-1] = True
        returns.append(float(np.sum(r)))
        lengths.append(len(r))
        cut.append(was_cut)
        terminated.append(bool(te[-1]))
        if record:
            buffers.append(
                EpisodeBuffer(
                    seed=ep_seed,
                    observations=np.stack(o),
                    actions=np.stack(a),
                    rewards=np.asarray(r, np.float64),
                    terminations=np.asarray(te, bool),
                    truncations=np.asarray(tr, bool),
                )
            )

    t = 0
    while any(active):
        unit = np.asarray(behaviour.act(behaviour.params, key, t, obs))
        actions = low + (np.clip(unit, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        for i in range(n):
            if not active[i]:
                continue
            o, r, te, tr, _ = envs[i].step(actions[i])
            o = o.astype(np.float32)
            ep = current[i]
            ep[0].append(o)
            ep[1].append(actions[i])
            ep[2].append(float(r))
            ep[3].append(bool(te))
            ep[4].append(bool(tr))
            if steps is not None:
                counted[i] += 1
            if te or tr:
                finish(i, was_cut=False)
                if episodes is not None:
                    counted[i] += 1
                if counted[i] >= quota[i]:
                    active[i] = False
                    continue
                o = envs[i].reset()[0].astype(np.float32)
                current[i] = [[o], [], [], [], [], None]
            elif counted[i] >= quota[i]:
                finish(i, was_cut=True)
                active[i] = False
                continue
            obs[i] = o
        t += 1
    for env in envs:
        env.close()
    return Collected(
        buffers, np.asarray(returns), np.asarray(lengths), np.asarray(cut, bool), np.asarray(terminated, bool)
    )


# ---------------------------------------------------------------- medium-replay
# Hyperparameters of the SAC run that are passed on when it is re-run to regenerate its replay buffer.
SAC_HYPERPARAMETERS = ("chunk", "learning_starts", "update_every", "buffer_size", "batch_size", "gamma", "tau",
                       "actor_lr", "critic_lr", "alpha_lr", "init_alpha", "autotune", "hidden_dims", "num_critics")


def policy_records(path: Path | None = None) -> dict:
    """envs/policies/policies.json: per behaviour policy, the SAC run configuration and step it came from."""
    return _read_json(path or POLICY_DIR / POLICIES_JSON)


def sac_command(sac_config: dict, steps: int, seed: int, run_dir: Path) -> list[str]:
    """The algorithms/sac.py command that repeats a training run for `steps` env steps and saves its replay."""
    cmd = [sys.executable, str(SAC_SCRIPT), "--env", sac_config["env"], "--seed", str(seed), "--num-seeds", "1",
           "--total-steps", str(steps), "--eval-every", str(steps), "--eval-episodes", "1",
           "--checkpoint-every", str(steps), "--run-dir", str(run_dir), "--save-replay"]
    for name in SAC_HYPERPARAMETERS:
        if name not in sac_config:
            continue
        flag, value = "--" + name.replace("_", "-"), sac_config[name]
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            cmd += [flag, *map(str, value)]
        else:
            cmd += [flag, str(value)]
    return cmd


def command_text(cmd: list[str]) -> str:
    """A SAC command as recorded in a build record: scripts relative to the repository, the builder's
    temporary run folder as <tmp>."""
    return "python " + " ".join(_rel(Path(c)) if c.endswith(".py") else "<tmp>" if "rlzoo-replay-" in c else c
                                for c in cmd[1:])


def split_replay(replay: dict[str, np.ndarray], env_id: str, first_seed: int | None) -> Collected:
    """Cut one seed's replay rows (s, a, r, s', terminal; in collection order) into Minari episodes. An
    episode ends at a termination or where the next row does not continue from s' (the env was reset after
    a time-limit truncation); the last one is cut by the budget unless it ended by itself."""
    from minari.data_collector import EpisodeBuffer

    from rlzoo.wrappers import HostVectorEnv

    obs, unit, rew = replay["observations"], replay["actions"], replay["rewards"]
    next_obs, done = replay["next_observations"], replay["dones"] > 0
    n = len(rew)
    if n == 0:
        raise RlzooError("the SAC run's replay buffer is empty; nothing to build")
    ends = done | np.r_[np.any(next_obs[:-1] != obs[1:], axis=1), True]
    env = HostVectorEnv(env_id, [0])  # the same action scaling the training run applied
    actions = env.scale_action(unit).astype(np.float32)
    time_limit = env.envs[0].spec.max_episode_steps
    env.close()
    episodes, returns, lengths, cut, terminated = [], [], [], [], []
    start = 0
    for end in np.flatnonzero(ends):
        sl = slice(start, end + 1)
        length = end + 1 - start
        was_cut = end == n - 1 and not done[end] and length != time_limit
        trunc = np.zeros(length, bool)
        trunc[-1] = not done[end]
        episodes.append(EpisodeBuffer(
            seed=first_seed if start == 0 else None,
            observations=np.concatenate([obs[sl], next_obs[end:end + 1]]),
            actions=actions[sl],
            rewards=rew[sl].astype(np.float64),
            terminations=done[sl].copy(),
            truncations=trunc,
        ))
        returns.append(float(rew[sl].astype(np.float64).sum()))
        lengths.append(length)
        cut.append(was_cut)
        terminated.append(bool(done[end]))
        start = end + 1
    return Collected(episodes, np.asarray(returns), np.asarray(lengths), np.asarray(cut, bool),
                     np.asarray(terminated, bool))


def _max_abs_diff(path_a: Path, path_b: Path) -> float:
    """Largest absolute difference between two saved parameter files (0.0: bit-identical values)."""
    import jax

    from rlzoo.checkpoint import load_params

    a, b = load_params(path_a)[0], load_params(path_b)[0]
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(leaves_a) != len(leaves_b) or any(np.shape(x) != np.shape(y) for x, y in zip(leaves_a, leaves_b)):
        return float("inf")
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                for x, y in zip(leaves_a, leaves_b)), default=0.0)


def read_run_replay(task: str, run_dir: Path, entry: dict, steps: int) -> tuple[dict[str, np.ndarray], dict]:
    """The first `steps` transitions of an existing SAC run's replay buffer (its replay.npz, else its newest
    checkpoint), after checking that the run is the one that trained `<task>-medium`'s policy: the same
    recorded configuration, and its actor snapshot at the medium step equal to the committed file bit for
    bit. Saves re-running the training when that run's folder is still at hand."""
    from rlzoo.checkpoint import Checkpointer, has_checkpoint

    run_dir = Path(run_dir).expanduser().resolve()
    how = f"build it without --replay-from (re-runs that training), or pass the run of {entry.get('file')}"
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise RlzooError(f"--replay-from {run_dir}: no config.json there, so it is not an algorithms/sac.py run "
                         f"folder; {how}")
    config = _read_json(config_path)
    sac_config, medium_step = entry["sac_config"], int(entry["step"])
    for name in ("env", "seed", *SAC_HYPERPARAMETERS):
        if name in sac_config and json.dumps(config.get(name)) != json.dumps(sac_config[name]):
            raise RlzooError(
                f"--replay-from {run_dir}: its {name} is {config.get(name)!r}, but {task}-medium's policy was "
                f"trained with {name} = {sac_config[name]!r} (envs/policies/{POLICIES_JSON}); {how}"
            )
    snapshot = run_dir / "policies" / f"step_{medium_step}.npz"
    if not snapshot.is_file() and config.get("total_steps") == medium_step:
        snapshot = run_dir / "policy.npz"
    medium = ROOT / entry["file"] if entry.get("file") else None
    if medium is None or not medium.is_file():
        raise RlzooError(f"{task}-medium's policy file is missing, so --replay-from cannot check that "
                         f"{run_dir} trained it; restore envs/policies/ from git")
    if not snapshot.is_file():
        raise RlzooError(f"--replay-from {run_dir}: it holds no actor snapshot at step {medium_step} "
                         f"(policies/step_{medium_step}.npz) to check against {_rel(medium)}; {how}")
    diff = _max_abs_diff(snapshot, medium)
    if diff != 0.0:
        raise RlzooError(f"--replay-from {run_dir}: its actor at step {medium_step} differs from {_rel(medium)} "
                         f"(max abs diff {diff:.3g}), so it is not the run that trained it; {how}")

    seed_axis = 0  # the recorded seed is the run's first seed (checked above)
    if (run_dir / "replay.npz").is_file():
        with np.load(run_dir / "replay.npz") as f:
            replay = {k: f[k][seed_axis] for k in f.files if k != "seeds"}
        source, collected = "replay.npz", len(replay["rewards"])
    elif has_checkpoint(run_dir):
        ckpt = Checkpointer(run_dir)
        state, meta = ckpt.read()
        ckpt.close()
        buf = state["replay"]
        data = {k: np.asarray(v[seed_axis]) for k, v in buf["data"].items()}
        collected, size = int(meta["step"]), int(np.asarray(buf["size"]).reshape(-1)[seed_axis])
        if collected > size:
            raise RlzooError(f"--replay-from {run_dir}: its replay buffer (capacity {size:,}) has overwritten the "
                             f"first of its {collected:,} transitions; {how}")
        replay = {k: v[:size] for k, v in data.items()}
        source = f"checkpoints/{meta['step']}"
    else:
        raise RlzooError(f"--replay-from {run_dir}: neither replay.npz nor a checkpoint is there; {how}")
    if collected < steps:
        raise RlzooError(f"--replay-from {run_dir}: its {source} holds {collected:,} transitions, fewer than the "
                         f"{steps:,} asked for; let the run go on, or {how}")
    replay = {k: v[:steps] for k, v in replay.items()}
    return replay, {"read_from": f"{run_dir}/{source}", "medium_snapshot": _rel(snapshot),
                    "reproduces_medium_policy": True, "medium_policy_max_abs_diff": 0.0}


def collect_replay(task: str, env_id: str, *, steps: int | None, seed: int | None, quiet: bool,
                   records_path: Path | None = None, replay_from: Path | None = None) -> tuple[Collected, dict]:
    """Re-run the SAC training that produced `<task>-medium`'s policy up to the step it was taken (or `steps`)
    and return its replay buffer as episodes, with a record of how it was made and whether the re-run
    reproduced the committed policy bit-exactly (the proof that this is that run's replay). With
    `replay_from`, read the replay of that training run itself instead (see `read_run_replay`)."""
    import subprocess
    import tempfile

    entry = policy_records(records_path)[f"{task}-medium"]
    sac_config = entry["sac_config"]
    steps_n = int(entry["step"]) if steps is None else int(steps)
    seed_n = int(sac_config["seed"]) if seed is None else int(seed)
    if replay_from is not None:
        if seed is not None:
            raise RlzooError("--seed and --replay-from do not go together: the run read from has its own seed")
        t0 = time.perf_counter()
        replay, read = read_run_replay(task, Path(replay_from), entry, steps_n)
        cmd = sac_command(sac_config, steps_n, seed_n, Path("<dir>"))
        info = {"sac_command": command_text(cmd),
                "sac_seconds": None, "read_seconds": round(time.perf_counter() - t0, 1),
                "medium_step": int(entry["step"]), "replay_steps": steps_n, "seed": seed_n,
                "medium_policy": entry.get("file"), **read}
        return split_replay(replay, env_id, seed_n), info
    with tempfile.TemporaryDirectory(prefix="rlzoo-replay-") as tmp:
        run_dir = Path(tmp) / "sac"
        cmd = sac_command(sac_config, steps_n, seed_n, run_dir)
        if quiet:
            cmd.append("--quiet")
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=quiet, text=True)
        if out.returncode != 0:
            tail = (out.stderr or "")[-600:] if quiet else "see the output above"
            raise RlzooError(f"re-running the SAC training for {task}-medium-replay failed (exit "
                             f"{out.returncode}): {' '.join(cmd[1:])}; {tail}")
        with np.load(run_dir / "replay.npz") as f:
            replay = {k: f[k][0] for k in f.files if k != "seeds"}
        info = {"sac_command": command_text(cmd),
                "sac_seconds": round(time.perf_counter() - t0, 1), "medium_step": int(entry["step"]),
                "replay_steps": steps_n, "seed": seed_n, "medium_policy": entry.get("file")}
        medium = ROOT / entry["file"] if entry.get("file") else None
        if steps is None and seed is None and medium is not None and medium.is_file():
            diff = _max_abs_diff(run_dir / "policy.npz", medium)
            info["reproduces_medium_policy"] = diff == 0.0
            info["medium_policy_max_abs_diff"] = diff
    return split_replay(replay, env_id, seed_n), info


# ---------------------------------------------------------------- medium-replay action logs
# A medium-replay build is the replay of hours of SAC training. Its actions, with the seed of the first reset,
# determine every transition (MuJoCo is deterministic and the env's own RNG draws the later resets), so the
# listed build is committed as an action log, envs/replays/<alias>.npz, and rebuilt from it in minutes.
ACTION_LOG_DIR = ROOT / "envs" / "replays"


def action_log_path(alias: str) -> Path:
    return ACTION_LOG_DIR / f"{alias}.npz"


def data_digest(episodes) -> str:
    """sha256 over every episode's observations, actions, rewards, terminations and truncations, in order: equal
    digests mean bit-identical data (Minari EpisodeBuffers and EpisodeData alike)."""
    h = hashlib.sha256()
    for ep in episodes:
        for x in (ep.observations, ep.actions, np.asarray(ep.rewards, np.float64), ep.terminations, ep.truncations):
            h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def save_action_log(alias: str, *, results_csv: Path = RESULTS_CSV, quiet: bool = False) -> Path:
    """Write the action log of the build of `alias` on disk, which must be the one results/datasets.csv lists."""
    from minari.dataset.minari_dataset import MinariDataset

    task, kind = split_alias(alias)
    if kind != "medium-replay":
        raise RlzooError(f"--save-actions is for <task>-medium-replay datasets, not '{alias}': the others are "
                         f"rebuilt from their behaviour policy in minutes ({build_command(alias)})")
    path, record = on_disk_build(alias, "there is no action log to save")
    listed = listed_row(Path(results_csv), alias)
    if not (record.get("full_recipe") and _same_stats(listed, record)):
        raise RlzooError(f"the build of '{alias}' at {path} is not the one {_rel(Path(results_csv))} lists, so its "
                         "action log would rebuild other data than the listed row. List it first "
                         f"({build_command(alias)} --relist), or rebuild the listed one, then save its actions.")
    episodes = list(MinariDataset(path / "data").iterate_episodes())
    lengths = np.array([len(ep.rewards) for ep in episodes], np.int64)
    source = {k: record.get(k) for k in ("dataset", "machine", "date", "code", "gymnasium", "mujoco", "episodes",
                                         "steps", "return_mean", "policy", "policy_sha256", "seed", "replay")}
    out = action_log_path(alias)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        actions=np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
        episode_lengths=lengths,
        terminated=np.array([bool(ep.terminations[-1]) for ep in episodes]),
        cut_last=np.array(record["episodes_cut_by_budget"] > 0),
        first_seed=np.array(int(record["seed"])),
        digest=np.array(data_digest(episodes)),
        source=np.array(json.dumps(source)),
    )
    os.replace(tmp, out)
    if not quiet:
        print(f"[build_dataset] {alias}: wrote its action log {_rel(out)} ({int(lengths.sum()):,} actions, "
              f"{len(lengths)} episodes, {out.stat().st_size / 2**20:.1f} MiB); {build_command(alias)} now "
              "replays it instead of re-running the SAC training", flush=True)
    return out


def _read_action_log(path: Path) -> dict:
    keys = ("actions", "episode_lengths", "terminated", "cut_last", "first_seed", "digest", "source")
    try:
        with np.load(path) as f:
            log = {k: f[k] for k in keys}
        log["source"] = json.loads(str(log["source"]))
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise RlzooError(f"{_rel(path)} is not a readable action log ({type(err).__name__}: {err}). Restore the "
                         f"committed file with `git checkout -- {_rel(path)}`, or rebuild without it by re-running "
                         "the SAC training (add --retrain).") from err
    if int(log["episode_lengths"].sum()) != len(log["actions"]):
        raise RlzooError(f"{_rel(path)} is inconsistent: its episode lengths add up to "
                         f"{int(log['episode_lengths'].sum()):,} steps but it holds {len(log['actions']):,} actions. "
                         f"Restore it with `git checkout -- {_rel(path)}`, or rebuild with --retrain.")
    return log


def replay_action_log(alias: str, env_id: str, medium_sha256: str | None) -> tuple[Collected, dict]:
    """Rebuild `alias` by stepping `env_id` with the actions of its log; the record says whether the data are
    bit-identical to the build the log was saved from. The env must end each episode where the log does."""
    import gymnasium as gym
    import mujoco
    from minari.data_collector import EpisodeBuffer

    path = action_log_path(alias)
    log = _read_action_log(path)
    source = log["source"]
    if medium_sha256 is not None and source.get("policy_sha256") != medium_sha256:
        raise RlzooError(
            f"{_rel(path)} was recorded from the training run of a medium policy with sha256 "
            f"{str(source.get('policy_sha256'))[:12]}, but {split_alias(alias)[0]}-medium's policy file now has "
            f"{medium_sha256[:12]}: the log is of another run. Rebuild by re-running the SAC training "
            f"({build_command(alias)} --force --retrain), then save the new log with --save-actions.")
    actions, lengths, seed = log["actions"], log["episode_lengths"], int(log["first_seed"])
    t0 = time.perf_counter()
    env = gym.make(env_id)
    obs = env.reset(seed=seed)[0]
    episodes, returns, cut, terminated = [], [], [], []
    start = 0
    for e, length in enumerate(lengths):
        was_cut = e == len(lengths) - 1 and bool(log["cut_last"])
        o, r, te = [obs.astype(np.float32)], [], []
        for t in range(length):
            obs, reward, term, trunc, _ = env.step(actions[start + t])
            o.append(obs.astype(np.float32))
            r.append(np.float32(reward))  # the training run's replay buffer held float32 rewards
            te.append(bool(term))
            ended = term or trunc
            if ended != (t == length - 1 and not was_cut) or (ended and term != bool(log["terminated"][e])):
                env.close()
                env_did = ("ended it by a termination" if term else "ended it at the time limit" if trunc else
                           "did not end it")
                rec_did = ("did not end it" if t < length - 1 or was_cut else
                           "ended it by a termination" if log["terminated"][e] else "ended it at the time limit")
                raise RlzooError(
                    f"replaying {_rel(path)} diverged from the recorded run at episode {e}, step {t}: the env "
                    f"{env_did}, the recording {rec_did}. Most likely this gymnasium {gym.__version__} / MuJoCo "
                    f"{mujoco.__version__} simulates differently from the one the log was saved with (gymnasium "
                    f"{source.get('gymnasium')}, MuJoCo {source.get('mujoco')}). Install those versions, or rebuild "
                    f"by re-running the SAC training: {build_command(alias)} --force --retrain")
        trunc_flags = np.zeros(length, bool)
        trunc_flags[-1] = not te[-1]
        rewards = np.asarray(r, np.float64)
        episodes.append(EpisodeBuffer(seed=seed if e == 0 else None, observations=np.stack(o),
                                      actions=actions[start:start + length], rewards=rewards,
                                      terminations=np.asarray(te, bool), truncations=trunc_flags))
        returns.append(float(rewards.sum()))
        cut.append(was_cut)
        terminated.append(te[-1])
        start += length
        if not was_cut:
            obs = env.reset()[0]
    env.close()
    digest = data_digest(episodes)
    info = {**(source.get("replay") or {}), "actions_log": _rel(path), "actions_log_sha256": sha256(path),
            "replayed_seconds": round(time.perf_counter() - t0, 1),
            "identical_to_log_source": digest == str(log["digest"]),
            "log_source": {k: source.get(k) for k in ("machine", "date", "code", "episodes", "return_mean")}}
    got = Collected(episodes, np.asarray(returns), lengths.copy(), np.asarray(cut, bool),
                    np.asarray(terminated, bool))
    return got, info


# ---------------------------------------------------------------- reference scores
def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RlzooError(f"{path} is not valid JSON ({err}); delete it or rebuild with --force-refs") from err


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_REFS_DONE: set[str] = set()  # tasks whose references this process recomputed already (--force-refs)


def stale_siblings(task: str, kind: str, refs: dict) -> list[str]:
    """Other locally built datasets of `task` whose recorded reference scores differ from `refs`."""
    out = []
    for other in KINDS:
        path = datasets_root() / local_id(task, other) / "rlzoo_build.json"
        if other == kind or not path.is_file():
            continue
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(path.read_text())
            if (rec.get("ref_min_score"), rec.get("ref_max_score")) != (refs["ref_min_score"], refs["ref_max_score"]):
                out.append(f"{task}-{other}")
    return out


def on_disk_build(alias: str, needed_for: str) -> tuple[Path, dict]:
    """(directory, build record) of the locally built `alias`; a one-paragraph error with the build command when
    it is not built (`needed_for` says what was wanted from it)."""
    task, kind = split_alias(alias)
    path = datasets_root() / local_id(task, kind)
    if not (path / "rlzoo_build.json").is_file():
        raise RlzooError(f"'{alias}' is not built at {path}, so {needed_for}; build it with {build_command(alias)}")
    return path, json.loads((path / "rlzoo_build.json").read_text())


def refresh_refs(alias: str, *, refs_path: Path = REFS_PATH, results_csv: Path | None = RESULTS_CSV,
                 quiet: bool = False) -> dict:
    """Give a dataset already on disk the task's current reference scores (e.g. after its expert policy was
    added) without collecting it again: Minari metadata, rlzoo_build.json and its results row."""
    from minari.dataset.minari_dataset import MinariDataset

    path, record = on_disk_build(alias, "there are no reference scores to refresh")
    refs = reference_scores(split_alias(alias)[0], Path(refs_path), quiet=quiet)
    ref_min, ref_max = float(refs["ref_min_score"]), float(refs["ref_max_score"])
    record.update(
        ref_min_score=ref_min, ref_max_score=ref_max, ref_min_source=refs.get("ref_min_source"),
        ref_max_source=refs.get("ref_max_source"), ref_max_policy_sha256=refs.get("ref_max_policy_sha256"),
        normalized_mean=float(normalize(record["return_mean"], ref_min, ref_max)),
    )
    ds = MinariDataset(path / "data")
    ds.storage.update_metadata({"ref_min_score": ref_min, "ref_max_score": ref_max,
                                "rlzoo_build": json.dumps(record)})
    _write_atomic(path / "rlzoo_build.json", json.dumps(record, indent=2) + "\n")
    if record.get("full_recipe") and results_csv is not None:
        list_build(Path(results_csv), record)
    if not quiet:
        print(f"[build_dataset] {alias}: reference scores now {ref_min:.1f} / {ref_max:.1f}, normalized "
              f"{record['normalized_mean']:.1f}", flush=True)
    return record


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
        print(f"[build_dataset] {alias}: {_rel(results_csv)} now lists the build on disk, {record['episodes']} "
              f"episodes, return {record['return_mean']:.1f}, normalized {record['normalized_mean']:.1f}{was}; runs "
              f"recorded on the replaced build leave the offline report's table", flush=True)
    return record


def reference_scores(task: str, refs_path: Path = REFS_PATH, force: bool = False, quiet: bool = False) -> dict:
    """ref_min_score / ref_max_score of `task` and where they come from, cached in `refs_path`.

    The cache entry is recomputed when missing, with `force`, or when the expert policy file appeared,
    disappeared or changed since it was computed."""
    import gymnasium
    import mujoco

    env_id = MUJOCO_ENVS[task]
    cache = _read_json(refs_path)
    entry = dict(cache.get(task) or {})
    if entry.get("env_id") != env_id:
        entry = {}
    expert = POLICY_DIR / f"{task}-expert.npz"
    expert_sha = sha256(expert) if expert.is_file() else None
    obs_dim, act_dim = env_info(env_id)
    changed = False
    if force or "ref_min_score" not in entry:
        if not quiet:
            print(
                f"[build_dataset] {task}: ref_min_score = mean return of the uniform random policy over "
                f"{REF_EPISODES} episodes ...",
                flush=True,
            )
        got = collect(
            env_id, random_behaviour(act_dim), seed=REF_SEED, num_envs=REF_ENVS, episodes=REF_EPISODES, record=False
        )
        entry.update(
            ref_min_score=float(got.returns.mean()),
            ref_min_std=float(got.returns.std()),
            ref_min_source=(
                f"uniform random policy, mean over {REF_EPISODES} episodes (env seeds {REF_SEED}+i, {REF_ENVS} envs)"
            ),
            ref_min_episodes=REF_EPISODES,
        )
        changed = True
    if force or "ref_max_score" not in entry or entry.get("ref_max_policy_sha256") != expert_sha:
        if expert_sha is not None:
            if not quiet:
                print(
                    f"[build_dataset] {task}: ref_max_score = mean return of {_rel(expert)} (deterministic "
                    f"actions tanh(mean)) over {REF_EPISODES} episodes ...",
                    flush=True,
                )
            policy = policy_behaviour(expert, obs_dim, act_dim, deterministic=True)
            got = collect(env_id, policy, seed=REF_SEED, num_envs=REF_ENVS, episodes=REF_EPISODES, record=False)
            entry.update(
                ref_max_score=float(got.returns.mean()),
                ref_max_std=float(got.returns.std()),
                ref_max_source=(
                    f"expert policy {_rel(expert)}, deterministic actions, mean over {REF_EPISODES} episodes "
                    f"(env seeds {REF_SEED}+i, {REF_ENVS} envs)"
                ),
                ref_max_policy=_rel(expert),
                ref_max_policy_sha256=expert_sha,
                ref_max_episodes=REF_EPISODES,
            )
        else:
            entry.update(
                ref_max_score=D4RL_REF_MAX[task],
                ref_max_std=None,
                ref_max_source=(
                    f"published D4RL reference expert score for {task} (d4rl/infos.py REF_MAX_SCORE, MuJoCo "
                    f"v2), used because {_rel(expert)} does not exist"
                ),
                ref_max_policy=None,
                ref_max_policy_sha256=None,
                ref_max_episodes=None,
            )
        changed = True
    if changed:
        entry.update(
            env_id=env_id,
            d4rl_ref_min_score=D4RL_REF_MIN[task],
            d4rl_ref_max_score=D4RL_REF_MAX[task],
            gymnasium=gymnasium.__version__,
            mujoco=mujoco.__version__,
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        cache[task] = dict(sorted(entry.items()))
        _write_atomic(refs_path, json.dumps(dict(sorted(cache.items())), indent=2) + "\n")
    return entry


# ---------------------------------------------------------------- writing
@contextlib.contextmanager
def _minari_root(path: Path):
    """Point Minari at another store for the duration (Minari reads MINARI_DATASETS_PATH on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def remove_stale_staging(root: Path) -> None:
    """Delete what crashed builds left in the store's staging folder (folders named <pid>-<hex>)."""
    from rlzoo.run import process_alive

    staging = root / STAGING
    if not staging.is_dir():
        return
    for d in staging.iterdir():
        pid = d.name.split("-", 1)[0]
        if not pid.isdigit() or not process_alive(int(pid)) or int(pid) == os.getpid():
            shutil.rmtree(d, ignore_errors=True)


def write_dataset(
    dataset_id: str,
    env_id: str,
    collected: Collected,
    *,
    ref_min: float,
    ref_max: float,
    description: str,
    algorithm_name: str,
    record: dict,
) -> Path:
    """Write the episodes as Minari dataset `dataset_id`, atomically: it is built in a staging store inside
    the real one and renamed into place, so a crash never leaves a dataset that looks complete."""
    import gymnasium as gym
    import minari
    from minari.namespace import create_namespace, list_local_namespaces

    root = datasets_root()
    remove_stale_staging(root)
    stage = root / STAGING / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    final = root / dataset_id
    try:
        env = gym.make(env_id)
        obs_space = env.observation_space
        obs_space = gym.spaces.Box(
            obs_space.low.astype(np.float32), obs_space.high.astype(np.float32), dtype=np.float32
        )
        with _minari_root(stage), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*author_email.*")
            ds = minari.create_dataset_from_buffers(
                dataset_id,
                collected.episodes,
                env=env,
                eval_env=env_id,
                algorithm_name=algorithm_name,
                author="rlzoo envs/build_dataset.py (locally built)",
                code_permalink=record["code"],
                observation_space=obs_space,
                action_space=env.action_space,
                ref_min_score=float(ref_min),
                ref_max_score=float(ref_max),
                description=description,
            )
            # as JSON text: Minari would store a dict as its Python repr
            ds.storage.update_metadata({"rlzoo_build": json.dumps(record)})
        env.close()
        staged = stage / dataset_id
        (staged / "rlzoo_build.json").write_text(json.dumps(record, indent=2) + "\n")
        namespace = dataset_id.rsplit("/", 1)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if namespace not in list_local_namespaces():
                create_namespace(namespace, description="rlzoo: LOCALLY BUILT D4RL-style stand-in datasets")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force: move the old one aside first; the rename of the new one is atomic
            os.rename(final, stage / "old")
        os.rename(staged, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / STAGING).rmdir()
    return final


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


BUILD_LOG_COLUMNS = ["dataset", "date", "machine", "xla_flags", "commit", "episodes", "steps", "return_mean",
                     "normalized_mean", "policy_sha256", "seed", "listed_return_mean", "identical_to_listed",
                     "medium_policy_max_abs_diff",  # for medium-replay re-runs: 0.0 = the committed actor
                     "collect_seconds", "actions_log", "identical_to_log"]
# actions_log: a medium-replay replayed from that log; identical_to_log: its data's sha256 equals the log's


def _close(a, b) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def _same_stats(listed: dict | None, record: dict) -> bool:
    """Whether a datasets.csv row and a build record have the same episode count and mean return (the same data,
    short of comparing them)."""
    return listed is not None and int(listed["episodes"]) == record["episodes"] and _close(
        listed["return_mean"], record["return_mean"])


def _append_log(path: Path, row: dict) -> None:
    """Append a row to builds.csv, written with all of BUILD_LOG_COLUMNS (a log from before a column was
    added gets it, empty in its old rows)."""
    _write_csv(path, BUILD_LOG_COLUMNS, [*_read_csv(path), row])


def list_build(results_csv: Path, record: dict) -> str:
    """Log a recipe build in builds.csv (beside datasets.csv) and list it in datasets.csv, unless datasets.csv
    already lists a build of the same recipe (policy file, seed, steps, reference scores) with other data:
    most likely a rebuild on another CPU type (builds repeat bit for bit per CPU type, see
    rlzoo.provenance.cpu_signature), or a medium-replay re-run that did not reproduce the medium actor. The
    listed build then stays, so that the runs trained on it keep their data score; returns what was done."""
    listed = listed_row(results_csv, record["dataset"])
    recipe_matches = listed is not None and (
        same_recipe(recipe_of(record), listed)
        and _close(listed["ref_min_score"], record["ref_min_score"])
        and _close(listed["ref_max_score"], record["ref_max_score"])
    )
    replay = record.get("replay") or {}
    identical = recipe_matches and _same_stats(listed, record) and replay.get("identical_to_log_source") is not False
    log_path = results_csv.with_name("builds.csv")
    _append_log(log_path, {**record, "commit": record["code"].rsplit(" ", 1)[-1],
                           "listed_return_mean": listed["return_mean"] if recipe_matches else "",
                           "identical_to_listed": identical if recipe_matches else "",
                           "medium_policy_max_abs_diff": replay.get("medium_policy_max_abs_diff", ""),
                           "actions_log": replay.get("actions_log", ""),
                           "identical_to_log": replay.get("identical_to_log_source", "")})
    if recipe_matches and not identical:
        why = ("replaying the committed action log gave other data (another MuJoCo or gymnasium build)"
               if replay.get("actions_log") else
               "the SAC re-run did not reproduce the committed medium actor, so this is the replay of another "
               "training run; runs trained on it are left out of the offline report's table"
               if replay.get("reproduces_medium_policy") is False else
               f"most likely a build on another CPU type (this one: {record['machine']}); runs trained on it "
               "are reported as runs on a rebuild")
        return (f"the data differ from the build {_rel(results_csv)} lists (return {record['return_mean']:.1f} "
                f"over {record['episodes']} episodes, listed {float(listed['return_mean']):.1f} over "
                f"{listed['episodes']}) although the policy, seed, steps and reference scores are the same: {why}. "
                f"The listed row stays; this build is logged in {_rel(log_path)}.")
    upsert_row(results_csv, record)
    return f"row written to {_rel(results_csv)}; build logged in {_rel(log_path)}"


# ---------------------------------------------------------------- the build
def check_alias(alias: str) -> None:
    """Raise a one-paragraph RlzooError unless `alias` has a recipe (or is a composite of recipes)."""
    parsed = split_alias(alias)
    if parsed is not None and parsed[1] in COMPOSITES:
        for part in _parts(alias):
            check_alias(part)
        return
    if alias in RECIPES:
        return
    buildable = sorted(RECIPES)
    if parsed is not None:
        raise RlzooError(
            f"{BUILD_SCRIPT} has no recipe for '{alias}' yet; it can build: {', '.join(buildable)}. Add a "
            f"Recipe(env id, behaviour policy file under envs/policies/, trained with algorithms/sac.py) to "
            f"RECIPES in {BUILD_SCRIPT}."
        )
    matches = close_matches(alias, buildable + aliases() + ["all"])
    raise RlzooError(
        f"unknown dataset '{alias}'. "
        + (f"Close matches: {', '.join(matches)}. " if matches else "")
        + f"Give D4RL-style names <task>-<kind> with task in {{{', '.join(MUJOCO_ENVS)}}} and kind in "
        f"{{{', '.join(KINDS)}}}, or 'all'; recipes exist for: {', '.join(buildable)}."
    )


def build(
    alias: str,
    *,
    force: bool = False,
    steps: int | None = None,
    seed: int | None = None,
    num_envs: int = RECIPE_ENVS,
    force_refs: bool = False,
    refs_path: Path = REFS_PATH,
    results_csv: Path | None = RESULTS_CSV,
    quiet: bool = False,
    replay_from: Path | None = None,
    retrain: bool = False,
) -> dict | None:
    """Build one dataset; returns its build record, or None when it was already on disk (and not `force`).

    `results_csv` gets a row only for a full-recipe build (no `steps` override)."""
    check_alias(alias)
    parsed = split_alias(alias)
    task, kind = parsed
    if kind in COMPOSITES:
        for part in _parts(alias):
            build(
                part,
                force=force,
                steps=steps,
                seed=seed,
                num_envs=num_envs,
                force_refs=force_refs,
                refs_path=refs_path,
                results_csv=results_csv,
                quiet=quiet,
                replay_from=replay_from,
                retrain=retrain,
            )
        return None
    recipe = RECIPES[alias]
    dataset_id = local_id(task, kind)
    log = (lambda *a: None) if quiet else (lambda msg: print(f"[build_dataset] {msg}", flush=True))
    if on_disk(dataset_id) and not force:
        log(
            f"{alias}: already built at {datasets_root() / dataset_id}; skipped (rebuild with "
            f"{build_command(alias)} --force)"
        )
        return None
    if num_envs < 1:
        raise RlzooError(f"--num-envs must be at least 1, got {num_envs}")
    reason = unavailable(alias)
    if reason is not None:
        raise RlzooError(reason)
    obs_dim, act_dim = env_info(recipe.env_id)
    replay = recipe.behaviour == REPLAY
    if not replay:
        behaviour = make_behaviour(alias, obs_dim, act_dim)
    refs = reference_scores(task, Path(refs_path), force=force_refs and task not in _REFS_DONE, quiet=quiet)
    _REFS_DONE.add(task)
    for other in stale_siblings(task, kind, refs):
        log(
            f"WARNING: {other} on disk was built with other reference scores than {alias} now gets, so "
            f"composites such as {task}-medium-expert will not load; rebuild it: {build_command(other)} --force"
        )

    t0 = time.perf_counter()
    replay_info = None
    # The committed action log rebuilds the listed medium-replay in minutes; --retrain, --replay-from or another
    # seed or length take the replay from a SAC training run instead.
    from_log = (replay and replay_from is None and not retrain and steps is None and seed is None
                and action_log_path(alias).is_file())
    if from_log:
        log(f"{alias}: replaying the actions of {_rel(action_log_path(alias))} on {recipe.env_id} ...")
        entry = policy_records().get(f"{task}-medium", {})
        medium_file = ROOT / entry["file"] if entry.get("file") else None
        got, replay_info = replay_action_log(
            alias, recipe.env_id, sha256(medium_file) if medium_file is not None and medium_file.is_file() else None)
        if not replay_info["identical_to_log_source"]:
            log(f"WARNING: the replay of {_rel(action_log_path(alias))} ended every episode where the recording did, "
                f"but its data are not bit-identical to the build the log was saved from "
                f"({replay_info['log_source']['machine']}): the MuJoCo or gymnasium build differs slightly")
    elif replay:
        log(f"{alias}: reading the replay buffer of {replay_from} ..." if replay_from is not None else
            f"{alias}: re-running the SAC training of {task}-medium's policy to regenerate its replay buffer ...")
        got, replay_info = collect_replay(task, recipe.env_id, steps=steps, seed=seed, quiet=quiet,
                                          replay_from=replay_from)
    if replay:
        steps_n, seed_n, full = int(got.lengths.sum()), replay_info["seed"], steps is None and seed is None
        medium = replay_info["medium_policy"]
        # Read from the training run itself (--replay-from checks its actor) or a re-run that reproduced the
        # actor: that run's replay. A re-run with another actor: another training run's. A re-run with another
        # seed or length is not compared with the committed actor.
        reproduced = replay_info.get("reproduces_medium_policy", True if replay_from is not None else None)
        name = {True: f"replay of the SAC run that trained {medium}",
                False: f"replay of a re-run of the SAC training of {medium} (same command and seed; its actor at "
                       f"step {replay_info['medium_step']} differs from that file)",
                None: f"replay of a SAC run with the training settings of {medium} (seed {seed_n}, "
                      f"{steps_n:,} steps; not compared with that file)"}[reproduced]
        behaviour = Behaviour(name, None, sha256=sha256(ROOT / medium) if medium else None, meta=replay_info)
        if reproduced is False and not from_log:
            log(
                f"WARNING: the re-run's actor at step {replay_info['medium_step']} differs from {medium} "
                f"(max abs diff {replay_info['medium_policy_max_abs_diff']:.3g}; other code, library versions "
                "or machine): the replay follows the same recipe but is not bit-identical to that run's"
            )
    else:
        steps_n = recipe.steps if steps is None else int(steps)
        seed_n = recipe.seed if seed is None else int(seed)
        # Only the recipe's own steps, seed and env count make the dataset datasets.csv lists.
        full = steps_n == recipe.steps and seed_n == recipe.seed and num_envs == RECIPE_ENVS
        log(
            f"{alias}: collecting {steps_n:,} transitions on {recipe.env_id} with {behaviour.name} "
            f"({num_envs} envs, seed {seed_n}) ..."
        )
        got = collect(recipe.env_id, behaviour, seed=seed_n, num_envs=num_envs, steps=steps_n)
    collect_s = time.perf_counter() - t0
    assert int(got.lengths.sum()) == steps_n, (got.lengths.sum(), steps_n)

    import gymnasium
    import minari
    import mujoco

    from rlzoo.provenance import commit, cpu_signature

    rets = got.complete_returns
    ref_min, ref_max = float(refs["ref_min_score"]), float(refs["ref_max_score"])
    normalized = float(normalize(rets.mean(), ref_min, ref_max))
    cmd = (
        build_command(alias)
        + ("" if steps is None else f" --steps {steps_n}")
        + ("" if seed is None else f" --seed {seed_n}")
        + ("" if num_envs == RECIPE_ENVS else f" --num-envs {num_envs}")
    )
    code = f"{BUILD_SCRIPT} at rlzoo commit {commit()}"
    if replay:
        policy_desc = (
            f"every transition of the replay buffer of the SAC training run that produced {medium}, in order, "
            f"up to env step {steps_n} ({replay_info['sac_command']})"
            + (f", regenerated by replaying its actions from {replay_info['actions_log']}" if from_log else "")
        )
    elif behaviour.name == RANDOM:
        policy_desc = "uniform random actions"
    else:
        policy_desc = (
            f"the SAC actor {behaviour.name} (sha256 {behaviour.sha256[:12]}), actions sampled "
            "a = tanh(mean + std * noise)"
        )
    record = {
        "dataset": alias,
        "dataset_id": dataset_id,
        "kind": kind,
        "source": "local",
        "env_id": recipe.env_id,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "minari": minari.__version__,
        "rlzoo": rlzoo.__version__,
        # the data are bit-identical only on a CPU of the same signature (see rlzoo.provenance.cpu_signature)
        "machine": cpu_signature(),
        "xla_flags": os.environ.get("XLA_FLAGS", "").strip(),  # e.g. --xla_cpu_max_isa changes the data too
        "code": code,
        "policy": behaviour.name,
        "policy_sha256": behaviour.sha256,
        "policy_meta": behaviour.meta,
        "seed": seed_n,
        "env_seeds": f"{seed_n}" + ("" if replay else "+i for env i") + " (first reset only)",
        "num_envs": 1 if replay else num_envs,
        "steps": steps_n,
        "full_recipe": full,
        "recipe_steps": replay_info["medium_step"] if replay else recipe.steps,
        "replay": replay_info,
        "episodes": len(got.lengths),
        "episodes_cut_by_budget": int(got.cut.sum()),
        "episodes_terminated": int(got.terminated.sum()),
        "return_mean": float(rets.mean()),
        "return_std": float(rets.std()),
        "return_min": float(rets.min()),
        "return_max": float(rets.max()),
        "returns_over": "episodes that ended by themselves (termination or time limit), not those cut by the budget",
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "normalized_mean": normalized,
        "ref_min_source": refs.get("ref_min_source"),
        "ref_max_source": refs.get("ref_max_source"),
        "ref_max_policy_sha256": refs.get("ref_max_policy_sha256"),
        "build_command": cmd,
        "collect_seconds": round(collect_s, 2),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    description = (
        f"LOCALLY BUILT stand-in following the D4RL recipe, not the official D4RL/Minari data. {kind} dataset "
        f"on {recipe.env_id}: {steps_n} transitions from {policy_desc}"
        + ("" if replay else f", {num_envs} envs stepped in lockstep")
        + f", seed {seed_n}. ref_min_score: {refs.get('ref_min_source')}; ref_max_score: "
        f"{refs.get('ref_max_source')}. Built with: {cmd} ({code})."
    )
    algorithm = "uniform random policy" if behaviour.name == RANDOM else f"SAC (algorithms/sac.py), {behaviour.name}"
    t1 = time.perf_counter()
    path = write_dataset(
        dataset_id,
        recipe.env_id,
        got,
        ref_min=ref_min,
        ref_max=ref_max,
        description=description,
        algorithm_name=algorithm,
        record=record,
    )
    write_s = time.perf_counter() - t1
    log(
        f"{alias}: wrote {dataset_id} to {path} ({len(got.lengths)} episodes, return {rets.mean():.1f} +- "
        f"{rets.std():.1f}, normalized {normalized:.1f}; collect {collect_s:.0f}s, write {write_s:.0f}s)"
    )
    if full and results_csv is not None:
        log(f"{alias}: {list_build(Path(results_csv), record)}")
    return record


def _parts(alias: str) -> list[str]:
    """The datasets a name is built as: its composite's parts (medium-expert -> medium, expert), or itself."""
    task, kind = split_alias(alias)
    return [f"{task}-{p}" for p in COMPOSITES.get(kind, (kind,))]


def expand(names: list[str] | tuple[str, ...]) -> list[str]:
    """Aliases in order, 'all' replaced by every recipe whose behaviour policy exists; all checked first."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [a for a in RECIPES if unavailable(a) is None and a not in out]
            continue
        check_alias(name)
        if name not in out:
            out.append(name)
    return out


@dataclass
class Config:
    datasets: Annotated[tuple[str, ...], tyro.conf.Positional]
    """D4RL-style aliases <task>-<kind> (halfcheetah-random, halfcheetah-medium, ...), or 'all'."""
    force: bool = False
    """Rebuild datasets that are already on disk."""
    steps: int | None = None
    """Transitions per dataset (default: the recipe's, 1M). An override is not written to results/."""
    seed: int | None = None
    """Seed (default: the recipe's): env i is reset with seed + i, the JAX key comes from it."""
    num_envs: int = RECIPE_ENVS
    """Environments stepped in lockstep, one jitted policy call per step for all of them (other than the
    recipe's 20, a build is not written to results/)."""
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


def main(config: Config) -> list[dict]:
    if not config.datasets:
        raise RlzooError(
            f"name the datasets to build, e.g. `python {BUILD_SCRIPT} halfcheetah-random`, or `all`; "
            f"recipes exist for: {', '.join(sorted(RECIPES))}"
        )
    names = expand(config.datasets)
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
    if config.save_actions:
        return [{"dataset": alias, "action_log": str(save_action_log(alias))} for alias in names]
    if config.refs_only:
        return [refresh_refs(part) for alias in names for part in _parts(alias)]
    if config.relist:
        return [relist(part) for alias in names for part in _parts(alias)]
    if "all" in config.datasets:
        for alias in RECIPES:
            if alias not in names:
                print(f"[build_dataset] skipping {alias}: {unavailable(alias)}", flush=True)
    records = []
    for alias in names:
        record = build(
            alias,
            force=config.force,
            steps=config.steps,
            seed=config.seed,
            num_envs=config.num_envs,
            force_refs=config.force_refs,
            replay_from=config.replay_from,
            retrain=config.retrain,
        )
        if record is not None:
            records.append(record)
    return records


if __name__ == "__main__":
    run_cli(main, Config)
