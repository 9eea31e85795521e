"""Vectorized evaluation on Gymnasium: all seeds x episodes step together, one jitted policy call per step."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import jax
import numpy as np

from rlzoo.errors import RlzooError, close_matches


def check_env_id(env_id: str) -> None:
    """Raise a readable RlzooError, with close matches, when `env_id` is not a registered Gymnasium env."""
    if env_id in gym.registry:
        return
    matches = close_matches(env_id, [k for k in gym.registry if "/" not in k or k.startswith("ALE/")])
    raise RlzooError(
        f"unknown environment '{env_id}'. "
        + (f"Close matches: {', '.join(matches)}. " if matches else "")
        + "Online algorithms take a Gymnasium id such as HalfCheetah-v5, Hopper-v5 or Walker2d-v5 "
        "(MuJoCo v5); offline algorithms take a dataset name such as halfcheetah-medium."
    )


class Evaluator:
    """Runs `episodes` greedy episodes for each of `num_seeds` parameter sets in one vector env.

    `policy(params, obs) -> action` is written for one seed and a batch of observations; it is
    vmapped over the seed axis of `params` and jitted once.
    """

    def __init__(self, env_id: str, policy: Callable, num_seeds: int, episodes: int, seed: int = 0,
                 evals_done: int = 0):
        """`evals_done`: evaluations an interrupted run already made, so that a resumed run continues with
        the same episode seeds as an uninterrupted one (the k-th evaluation always plays the same episodes)."""
        check_env_id(env_id)
        self.num_seeds, self.episodes, self.seed = num_seeds, episodes, seed
        self.envs = gym.make_vec(env_id, num_envs=num_seeds * episodes, vectorization_mode="sync")
        space = self.envs.single_action_space
        self.low, self.high = space.low, space.high
        self._act = jax.jit(jax.vmap(policy))
        self.calls = evals_done

    def __call__(self, params) -> np.ndarray:
        """Undiscounted returns of the first episode in every env, shape [num_seeds, episodes]."""
        n = self.num_seeds * self.episodes
        obs, _ = self.envs.reset(seed=[self.seed + 10_000 * self.calls + i for i in range(n)])
        self.calls += 1
        returns = np.zeros(n)
        running = np.ones(n, dtype=bool)
        while running.any():
            batch = obs.astype(np.float32).reshape(self.num_seeds, self.episodes, -1)
            action = np.asarray(self._act(params, batch)).reshape(n, -1)
            obs, reward, terminated, truncated, _ = self.envs.step(np.clip(action, self.low, self.high))
            returns += reward * running
            running &= ~(terminated | truncated)
        return returns.reshape(self.num_seeds, self.episodes)

    def close(self) -> None:
        self.envs.close()
