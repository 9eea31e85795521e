"""Step Gymnasium MuJoCo envs in lockstep with a behaviour policy (one jitted call per step for all of them)
and keep every env's episodes as Minari `EpisodeBuffer`s, true terminations and truncations apart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from envs.behaviours import Behaviour
from rlzoo.datasets import complete_returns
from rlzoo.errors import RlzooError


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
    """(observation size, action size) of `env_id`."""
    import gymnasium as gym

    env = gym.make(env_id)
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return dims


def progress_bar(total: int, label: str | None, unit: str) -> tqdm:
    """The console bar of a long loop (on stderr); `label` None shows none."""
    return tqdm(total=total, desc=label, unit=unit, unit_scale=True, disable=label is None, mininterval=0.5,
                dynamic_ncols=True)


class _Episodes:
    """The episode running in each env, and the finished ones (as EpisodeBuffers when `record`)."""

    def __init__(self, first_obs: np.ndarray, seed: int, record: bool):
        self.record = record
        self.current = [self._new(o, seed + i) for i, o in enumerate(first_obs)]
        self.buffers, self.returns, self.lengths, self.cut, self.terminated = [], [], [], [], []

    @staticmethod
    def _new(obs, seed: int | None) -> dict:
        return {"seed": seed, "observations": [obs], "actions": [], "rewards": [], "terminations": [],
                "truncations": []}

    def step(self, i: int, action, obs, reward, term, trunc) -> None:
        ep = self.current[i]
        ep["observations"].append(obs)
        ep["actions"].append(action)
        ep["rewards"].append(float(reward))
        ep["terminations"].append(bool(term))
        ep["truncations"].append(bool(trunc))

    def start(self, i: int, obs) -> None:
        """A new episode in env i after a reset (seeded by the env's own RNG: no seed of its own)."""
        self.current[i] = self._new(obs, None)

    def finish(self, i: int, was_cut: bool) -> None:
        ep = self.current[i]
        if was_cut:
            ep["truncations"][-1] = True
        self.returns.append(float(np.sum(ep["rewards"])))
        self.lengths.append(len(ep["rewards"]))
        self.cut.append(was_cut)
        self.terminated.append(ep["terminations"][-1])
        if self.record:
            from minari.data_collector import EpisodeBuffer

            self.buffers.append(EpisodeBuffer(
                seed=ep["seed"], observations=np.stack(ep["observations"]), actions=np.stack(ep["actions"]),
                rewards=np.asarray(ep["rewards"], np.float64), terminations=np.asarray(ep["terminations"], bool),
                truncations=np.asarray(ep["truncations"], bool)))

    def collected(self) -> Collected:
        return Collected(self.buffers, np.asarray(self.returns), np.asarray(self.lengths),
                         np.asarray(self.cut, bool), np.asarray(self.terminated, bool))


def _step_env(env, i: int, action, obs: np.ndarray, episodes: _Episodes, counted: list, quota: int,
              by_steps: bool) -> bool:
    """Step env i once; returns whether it still runs (its share of steps or episodes not yet used up)."""
    o, r, te, tr, _ = env.step(action)
    o = o.astype(np.float32)
    episodes.step(i, action, o, r, te, tr)
    if by_steps:
        counted[i] += 1
    if te or tr:
        episodes.finish(i, was_cut=False)
        if not by_steps:
            counted[i] += 1
        if counted[i] >= quota:
            return False
        o = env.reset()[0].astype(np.float32)
        episodes.start(i, o)
    elif counted[i] >= quota:
        episodes.finish(i, was_cut=True)
        return False
    obs[i] = o
    return True


def collect(env_id: str, behaviour: Behaviour, *, seed: int, num_envs: int, steps: int | None = None,
            episodes: int | None = None, record: bool = True, progress: str | None = None) -> Collected:
    """Run `behaviour` in `num_envs` envs (env i reset with seed + i, JAX key from `seed`) in lockstep until
    exactly `steps` transitions, or `episodes` episodes, are collected in total (split evenly over the
    envs). In step mode, an episode still running when its env's share is used up is cut there and marked
    truncated. `progress` labels a console bar over the transitions (or episodes) collected."""
    import gymnasium as gym
    import jax

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
    kept = _Episodes(obs, seed, record)
    counted, active = [0] * n, [True] * n
    with progress_bar(total, progress, "step" if steps is not None else "episode") as bar:
        t = 0
        while any(active):
            unit = np.asarray(behaviour.act(behaviour.params, key, t, obs))
            actions = low + (np.clip(unit, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
            for i in range(n):
                if active[i]:
                    active[i] = _step_env(envs[i], i, actions[i], obs, kept, counted, quota[i], steps is not None)
            bar.update(sum(counted) - bar.n)
            t += 1
    for env in envs:
        env.close()
    return kept.collected()
