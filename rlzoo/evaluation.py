"""Vectorized evaluation on Gymnasium: all seeds x episodes step together, one jitted policy call per step."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import jax
import numpy as np

from rlzoo.envs import check_env_id


class Evaluator:
    """Runs `episodes` greedy episodes for each of `num_seeds` parameter sets in one vector env.

    `policy(params, obs) -> action` is written for one seed and a batch of observations; it is
    vmapped over the seed axis of `params` and jitted once. With `with_return`, it is
    `policy(params, obs, ret) -> action`, `ret` [episodes] the return each episode has collected so far
    (return-conditioned policies count their return-to-go down with it).
    """

    def __init__(self, env_id: str, policy: Callable, seeds: list[int], episodes: int, evals_done: int = 0,
                 with_return: bool = False):
        """`seeds`: the training seeds (one parameter set each); episode e of the k-th evaluation of seed s
        resets the env with 1e6 + 1e4 k + s * episodes + e, so separate runs with different seeds, or the
        same seed inside different --num-seeds sweeps, play the same or disjoint episodes as they should.
        `evals_done`: evaluations an interrupted run already made, so that a resumed run continues with
        the same episodes as an uninterrupted one."""
        check_env_id(env_id)
        self.seeds, self.num_seeds, self.episodes = list(seeds), len(seeds), episodes
        num_seeds = self.num_seeds
        self.envs = gym.make_vec(env_id, num_envs=num_seeds * episodes, vectorization_mode="sync")
        space = self.envs.single_action_space
        self.low, self.high = space.low, space.high
        self._act = jax.jit(jax.vmap(policy))
        self.with_return = with_return
        self.calls = evals_done

    def __call__(self, params) -> np.ndarray:
        """Undiscounted returns of the first episode in every env, shape [num_seeds, episodes]."""
        n = self.num_seeds * self.episodes
        reset_seeds = [1_000_000 + 10_000 * self.calls + s * self.episodes + e
                       for s in self.seeds for e in range(self.episodes)]
        obs, _ = self.envs.reset(seed=reset_seeds)
        self.calls += 1
        returns = np.zeros(n)
        running = np.ones(n, dtype=bool)
        while running.any():
            batch = obs.astype(np.float32).reshape(self.num_seeds, self.episodes, -1)
            args = (returns.astype(np.float32).reshape(self.num_seeds, self.episodes),) if self.with_return else ()
            action = np.asarray(self._act(params, batch, *args)).reshape(n, -1)
            obs, reward, terminated, truncated, _ = self.envs.step(np.clip(action, self.low, self.high))
            returns += reward * running
            running &= ~(terminated | truncated)
        return returns.reshape(self.num_seeds, self.episodes)

    def close(self) -> None:
        self.envs.close()


class TrainingReturns:
    """The score of streaming algorithms: per seed, the mean undiscounted return of the training episodes that
    ended since the last report. Chunks `add` the sums and counts of the episodes they ended (and the last
    return, reported when none ended); `report()` is an evaluation function's (returns [seeds, 1], scores).
    Saved with every checkpoint (`get_state` / `set_state`) so that a resumed run reports the same numbers."""

    def __init__(self, num_seeds: int):
        self.total, self.count = np.zeros(num_seeds), np.zeros(num_seeds)
        self.last = np.full(num_seeds, np.nan)

    def add(self, total, count, last) -> None:
        self.total += np.asarray(total, np.float64)
        self.count += np.asarray(count, np.float64)
        self.last = np.where(np.isfinite(last), np.asarray(last, np.float64), self.last)

    def report(self) -> tuple[np.ndarray, np.ndarray]:
        mean = np.where(self.count > 0, self.total / np.maximum(self.count, 1), self.last)
        self.total, self.count = np.zeros_like(self.total), np.zeros_like(self.count)
        return mean[:, None], mean

    def get_state(self) -> dict:
        return {"total": self.total.tolist(), "count": self.count.tolist(), "last": self.last.tolist()}

    def set_state(self, state: dict) -> None:
        self.total, self.count = np.asarray(state["total"]), np.asarray(state["count"])
        self.last = np.asarray(state["last"], np.float64)
