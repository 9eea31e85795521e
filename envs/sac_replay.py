"""medium-replay from its SAC training run: re-run that training (algorithms/sac.py, same configuration and
seed, up to the step where the medium policy was taken) or read the run's own folder, and cut its replay
buffer into Minari episodes, with a record of whether it is provably that run's replay."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from envs.collect import Collected
from envs.recipes import POLICIES_JSON, policy_records
from envs.shared import ROOT, read_json, rel
from rlzoo.checkpoint import Checkpointer, has_checkpoint, load_params
from rlzoo.envs import HostVectorEnv
from rlzoo.errors import RlzooError

SAC_SCRIPT = ROOT / "algorithms" / "sac.py"
# Hyperparameters of the SAC run that are passed on when it is re-run to regenerate its replay buffer.
SAC_HYPERPARAMETERS = ("chunk", "learning_starts", "update_every", "buffer_size", "batch_size", "gamma", "tau",
                       "actor_lr", "critic_lr", "alpha_lr", "init_alpha", "autotune", "hidden_dims", "num_critics")


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
    return "python " + " ".join(rel(Path(c)) if c.endswith(".py") else "<tmp>" if "rlzoo-replay-" in c else c
                                for c in cmd[1:])


def split_replay(replay: dict[str, np.ndarray], env_id: str, first_seed: int | None) -> Collected:
    """Cut one seed's replay rows (s, a, r, s', terminal; in collection order) into Minari episodes. An
    episode ends at a termination or where the next row does not continue from s' (the env was reset after
    a time-limit truncation); the last one is cut by the budget unless it ended by itself."""
    from minari.data_collector import EpisodeBuffer

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
        trunc = np.zeros(length, bool)
        trunc[-1] = not done[end]
        episodes.append(EpisodeBuffer(
            seed=first_seed if start == 0 else None, observations=np.concatenate([obs[sl], next_obs[end:end + 1]]),
            actions=actions[sl], rewards=rew[sl].astype(np.float64), terminations=done[sl].copy(), truncations=trunc))
        returns.append(float(rew[sl].astype(np.float64).sum()))
        lengths.append(length)
        cut.append(end == n - 1 and not done[end] and length != time_limit)
        terminated.append(bool(done[end]))
        start = end + 1
    return Collected(episodes, np.asarray(returns), np.asarray(lengths), np.asarray(cut, bool),
                     np.asarray(terminated, bool))


def max_abs_diff(path_a: Path, path_b: Path) -> float:
    """Largest absolute difference between two saved parameter files (0.0: bit-identical values)."""
    import jax

    a, b = load_params(path_a)[0], load_params(path_b)[0]
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(leaves_a) != len(leaves_b) or any(np.shape(x) != np.shape(y) for x, y in zip(leaves_a, leaves_b)):
        return float("inf")
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                for x, y in zip(leaves_a, leaves_b)), default=0.0)


def _check_trained_medium(task: str, run_dir: Path, entry: dict, how: str) -> Path:
    """Refuse unless the SAC run in `run_dir` trained `<task>-medium`'s policy: the same recorded configuration,
    and its actor snapshot at the medium step equal to the committed file bit for bit; returns that snapshot."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise RlzooError(f"--replay-from {run_dir}: no config.json there, so it is not an algorithms/sac.py run "
                         f"folder; {how}")
    config = read_json(config_path)
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
                         f"(policies/step_{medium_step}.npz) to check against {rel(medium)}; {how}")
    diff = max_abs_diff(snapshot, medium)
    if diff != 0.0:
        raise RlzooError(f"--replay-from {run_dir}: its actor at step {medium_step} differs from {rel(medium)} "
                         f"(max abs diff {diff:.3g}), so it is not the run that trained it; {how}")
    return snapshot


def _run_replay_rows(run_dir: Path, how: str) -> tuple[dict[str, np.ndarray], str, int]:
    """(replay rows of the run's first seed, where they were read, transitions the run collected): its
    replay.npz, else the replay buffer of its newest checkpoint."""
    seed_axis = 0  # the recorded seed is the run's first seed (checked by _check_trained_medium)
    if (run_dir / "replay.npz").is_file():
        with np.load(run_dir / "replay.npz") as f:
            replay = {k: f[k][seed_axis] for k in f.files if k != "seeds"}
        return replay, "replay.npz", len(replay["rewards"])
    if not has_checkpoint(run_dir):
        raise RlzooError(f"--replay-from {run_dir}: neither replay.npz nor a checkpoint is there; {how}")
    ckpt = Checkpointer(run_dir)
    state, meta = ckpt.read()
    ckpt.close()
    buf = state["replay"]
    data = {k: np.asarray(v[seed_axis]) for k, v in buf["data"].items()}
    collected, size = int(meta["step"]), int(np.asarray(buf["size"]).reshape(-1)[seed_axis])
    if collected > size:
        raise RlzooError(f"--replay-from {run_dir}: its replay buffer (capacity {size:,}) has overwritten the "
                         f"first of its {collected:,} transitions; {how}")
    return {k: v[:size] for k, v in data.items()}, f"checkpoints/{meta['step']}", collected


def read_run_replay(task: str, run_dir: Path, entry: dict, steps: int) -> tuple[dict[str, np.ndarray], dict]:
    """The first `steps` transitions of an existing SAC run's replay buffer, after checking that the run is the
    one that trained `<task>-medium`'s policy. Saves re-running the training when its folder is at hand."""
    run_dir = Path(run_dir).expanduser().resolve()
    how = f"build it without --replay-from (re-runs that training), or pass the run of {entry.get('file')}"
    snapshot = _check_trained_medium(task, run_dir, entry, how)
    replay, source, collected = _run_replay_rows(run_dir, how)
    if collected < steps:
        raise RlzooError(f"--replay-from {run_dir}: its {source} holds {collected:,} transitions, fewer than the "
                         f"{steps:,} asked for; let the run go on, or {how}")
    replay = {k: v[:steps] for k, v in replay.items()}
    return replay, {"read_from": f"{run_dir}/{source}", "medium_snapshot": rel(snapshot),
                    "reproduces_medium_policy": True, "medium_policy_max_abs_diff": 0.0}


def _rerun(task: str, entry: dict, steps_n: int, seed_n: int, quiet: bool, compare: bool) -> tuple[dict, dict]:
    """Re-run the SAC training in a temporary folder; (its replay rows, how it was made)."""
    with tempfile.TemporaryDirectory(prefix="rlzoo-replay-") as tmp:
        run_dir = Path(tmp) / "sac"
        cmd = sac_command(entry["sac_config"], steps_n, seed_n, run_dir) + (["--quiet"] if quiet else [])
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=quiet, text=True)
        if out.returncode != 0:
            tail = (out.stderr or "")[-600:] if quiet else "see the output above"
            raise RlzooError(f"re-running the SAC training for {task}-medium-replay failed (exit "
                             f"{out.returncode}): {' '.join(cmd[1:])}; {tail}")
        with np.load(run_dir / "replay.npz") as f:
            replay = {k: f[k][0] for k in f.files if k != "seeds"}
        info = {"sac_command": command_text(cmd), "sac_seconds": round(time.perf_counter() - t0, 1),
                "medium_step": int(entry["step"]), "replay_steps": steps_n, "seed": seed_n,
                "medium_policy": entry.get("file")}
        medium = ROOT / entry["file"] if entry.get("file") else None
        if compare and medium is not None and medium.is_file():
            diff = max_abs_diff(run_dir / "policy.npz", medium)
            info["reproduces_medium_policy"] = diff == 0.0
            info["medium_policy_max_abs_diff"] = diff
    return replay, info


def collect_replay(task: str, env_id: str, *, steps: int | None, seed: int | None, quiet: bool,
                   records_path: Path | None = None, replay_from: Path | None = None) -> tuple[Collected, dict]:
    """Re-run the SAC training that produced `<task>-medium`'s policy up to the step it was taken (or `steps`)
    and return its replay buffer as episodes, with a record of how it was made and whether the re-run
    reproduced the committed policy bit-exactly (the proof that this is that run's replay). With
    `replay_from`, read the replay of that training run itself instead (see `read_run_replay`)."""
    entry = policy_records(records_path)[f"{task}-medium"]
    steps_n = int(entry["step"]) if steps is None else int(steps)
    seed_n = int(entry["sac_config"]["seed"]) if seed is None else int(seed)
    if replay_from is None:
        replay, info = _rerun(task, entry, steps_n, seed_n, quiet, compare=steps is None and seed is None)
        return split_replay(replay, env_id, seed_n), info
    if seed is not None:
        raise RlzooError("--seed and --replay-from do not go together: the run read from has its own seed")
    t0 = time.perf_counter()
    replay, read = read_run_replay(task, Path(replay_from), entry, steps_n)
    info = {"sac_command": command_text(sac_command(entry["sac_config"], steps_n, seed_n, Path("<dir>"))),
            "sac_seconds": None, "read_seconds": round(time.perf_counter() - t0, 1),
            "medium_step": int(entry["step"]), "replay_steps": steps_n, "seed": seed_n,
            "medium_policy": entry.get("file"), **read}
    return split_replay(replay, env_id, seed_n), info
