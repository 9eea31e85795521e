"""medium-replay action logs. A medium-replay build is the replay of hours of SAC training; its actions, with
the seed of the first reset, determine every transition (MuJoCo is deterministic and the env's own RNG draws the
later resets). So the listed build is committed as envs/replays/<alias>.npz (--save-actions) and rebuilt from it
in minutes, checked bit for bit against the build it was saved from."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from envs.collect import Collected, progress_bar
from envs.listing import RESULTS_CSV, listed_row, same_stats
from envs.recipes import build_command
from envs.shared import ROOT, rel, sha256
from envs.store import on_disk_build
from rlzoo.datasets import split_alias
from rlzoo.errors import RlzooError

# Read as replay_logs.ACTION_LOG_DIR at call time (tests point it at a temporary folder).
ACTION_LOG_DIR = ROOT / "envs" / "replays"
_SOURCE_KEYS = ("dataset", "machine", "date", "code", "gymnasium", "mujoco", "episodes", "steps", "return_mean",
                "policy", "policy_sha256", "seed", "replay")


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

    if split_alias(alias)[1] != "medium-replay":
        raise RlzooError(f"--save-actions is for <task>-medium-replay datasets, not '{alias}': the others are "
                         f"rebuilt from their behaviour policy in minutes ({build_command(alias)})")
    path, record = on_disk_build(alias, "there is no action log to save")
    if not (record.get("full_recipe") and same_stats(listed_row(Path(results_csv), alias), record)):
        raise RlzooError(f"the build of '{alias}' at {path} is not the one {rel(Path(results_csv))} lists, so its "
                         "action log would rebuild other data than the listed row. List it first "
                         f"({build_command(alias)} --relist), or rebuild the listed one, then save its actions.")
    episodes = list(MinariDataset(path / "data").iterate_episodes())
    lengths = np.array([len(ep.rewards) for ep in episodes], np.int64)
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
        source=np.array(json.dumps({k: record.get(k) for k in _SOURCE_KEYS})),
    )
    os.replace(tmp, out)
    if not quiet:
        print(f"[build_dataset] {alias}: wrote its action log {rel(out)} ({int(lengths.sum()):,} actions, "
              f"{len(lengths)} episodes, {out.stat().st_size / 2**20:.1f} MiB); {build_command(alias)} now "
              "replays it instead of re-running the SAC training", flush=True)
    return out


def read_action_log(path: Path) -> dict:
    """The arrays of an action log and its source record; a clean error for a damaged file."""
    keys = ("actions", "episode_lengths", "terminated", "cut_last", "first_seed", "digest", "source")
    try:
        with np.load(path) as f:
            log = {k: f[k] for k in keys}
        log["source"] = json.loads(str(log["source"]))
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise RlzooError(f"{rel(path)} is not a readable action log ({type(err).__name__}: {err}). Restore the "
                         f"committed file with `git checkout -- {rel(path)}`, or rebuild without it by re-running "
                         "the SAC training (add --retrain).") from err
    if int(log["episode_lengths"].sum()) != len(log["actions"]):
        raise RlzooError(f"{rel(path)} is inconsistent: its episode lengths add up to "
                         f"{int(log['episode_lengths'].sum()):,} steps but it holds {len(log['actions']):,} actions. "
                         f"Restore it with `git checkout -- {rel(path)}`, or rebuild with --retrain.")
    return log


def _diverged(alias: str, log: dict, e: int, t: int, term: bool, trunc: bool, was_cut: bool) -> RlzooError:
    """The error for a replay whose env ended (or did not end) episode `e` at step `t` unlike the recording."""
    import gymnasium as gym
    import mujoco

    source, length = log["source"], int(log["episode_lengths"][e])
    env_did = "ended it by a termination" if term else "ended it at the time limit" if trunc else "did not end it"
    rec_did = ("did not end it" if t < length - 1 or was_cut else
               "ended it by a termination" if log["terminated"][e] else "ended it at the time limit")
    return RlzooError(
        f"replaying {rel(action_log_path(alias))} diverged from the recorded run at episode {e}, step {t}: the env "
        f"{env_did}, the recording {rec_did}. Most likely this gymnasium {gym.__version__} / MuJoCo "
        f"{mujoco.__version__} simulates differently from the one the log was saved with (gymnasium "
        f"{source.get('gymnasium')}, MuJoCo {source.get('mujoco')}). Install those versions, or rebuild "
        f"by re-running the SAC training: {build_command(alias)} --force --retrain")


def _replay_episode(env, obs, alias: str, log: dict, e: int, start: int, bar) -> tuple[dict, object]:
    """Step episode `e` of the log from `obs`; (its arrays, the env's last observation). The env must end it
    where and how the recording did."""
    length, was_cut = int(log["episode_lengths"][e]), e == len(log["episode_lengths"]) - 1 and bool(log["cut_last"])
    actions = log["actions"][start:start + length]
    o, r, te = [obs.astype(np.float32)], [], []
    for t in range(length):
        obs, reward, term, trunc, _ = env.step(actions[t])
        o.append(obs.astype(np.float32))
        r.append(np.float32(reward))  # the training run's replay buffer held float32 rewards
        te.append(bool(term))
        ended = term or trunc
        if ended != (t == length - 1 and not was_cut) or (ended and term != bool(log["terminated"][e])):
            env.close()
            raise _diverged(alias, log, e, t, term, trunc, was_cut)
    bar.update(length)
    truncations = np.zeros(length, bool)
    truncations[-1] = not te[-1]
    return {"observations": np.stack(o), "actions": actions, "rewards": np.asarray(r, np.float64),
            "terminations": np.asarray(te, bool), "truncations": truncations, "cut": was_cut}, obs


def _check_source(alias: str, log: dict, medium_sha256: str | None) -> None:
    """Refuse a log recorded from the training run of another medium policy than the committed one."""
    recorded = log["source"].get("policy_sha256")
    if medium_sha256 is not None and recorded != medium_sha256:
        raise RlzooError(
            f"{rel(action_log_path(alias))} was recorded from the training run of a medium policy with sha256 "
            f"{str(recorded)[:12]}, but {split_alias(alias)[0]}-medium's policy file now has {medium_sha256[:12]}: "
            f"the log is of another run. Rebuild by re-running the SAC training ({build_command(alias)} --force "
            "--retrain), then save the new log with --save-actions.")


def replay_action_log(alias: str, env_id: str, medium_sha256: str | None, *,
                      progress: bool = False) -> tuple[Collected, dict]:
    """Rebuild `alias` by stepping `env_id` with the actions of its log (a console bar over the replayed steps
    with `progress`); the record says whether the data are bit-identical to the build the log was saved from."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    path = action_log_path(alias)
    log = read_action_log(path)
    _check_source(alias, log, medium_sha256)
    seed, t0 = int(log["first_seed"]), time.perf_counter()
    env = gym.make(env_id)
    obs, start, episodes, cut = env.reset(seed=seed)[0], 0, [], []
    with progress_bar(len(log["actions"]), f"{alias} replay" if progress else None, "step") as bar:
        for e, length in enumerate(log["episode_lengths"]):
            ep, obs = _replay_episode(env, obs, alias, log, e, start, bar)
            cut.append(ep.pop("cut"))
            episodes.append(EpisodeBuffer(seed=seed if e == 0 else None, **ep))
            start += int(length)
            if not cut[-1]:
                obs = env.reset()[0]
    env.close()
    source = log["source"]
    info = {**(source.get("replay") or {}), "actions_log": rel(path), "actions_log_sha256": sha256(path),
            "replayed_seconds": round(time.perf_counter() - t0, 1),
            "identical_to_log_source": data_digest(episodes) == str(log["digest"]),
            "log_source": {k: source.get(k) for k in ("machine", "date", "code", "episodes", "return_mean")}}
    got = Collected(episodes, np.asarray([float(ep.rewards.sum()) for ep in episodes]), log["episode_lengths"].copy(),
                    np.asarray(cut, bool), np.asarray([bool(ep.terminations[-1]) for ep in episodes], bool))
    return got, info
