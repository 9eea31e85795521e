"""One jitted call per env step, for streaming algorithms whose envs run on the host (stream AC, stream TD,
stream Q on Atari): `PerStep` jits and vmaps a one-seed `step(state, *inputs) -> (state, outputs)`;
`pack_host_step` / `unpack_host_step` carry one MuJoCo step of rlzoo.envs.HostVectorEnv into it as one array, and
`observe_host_step` turns it into what the agent learns from and acts on (rlzoo.normalizers).

Such a call does little arithmetic, so much of its time is JAX's per-array cost of passing the state in and out
(about 3 us per array on the project's 2-core CPU). With few seeds PerStep therefore carries the state's float
arrays as one flat vector between calls (split and rejoined inside the jit); with many seeds those copies cost
more than they save and the state stays a tree (`results/stream/speed_levers.csv`: 1.33x at 1 seed, 1.22x at 2,
1.02x at 4, 0.87x at 8).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo import normalizers as norm

FLAT_BELOW = 4  # seeds: flat state for fewer, a tree from here on


class PerStep:
    """`carry = per_step.enter(state)` once per chunk, then `carry, outputs = per_step(carry, *inputs)` per env
    step, and `state = per_step.leave(carry)` before the state is checkpointed or evaluated."""

    def __init__(self, step: Callable, state, flat: bool | None = None):
        leaves, self.treedef = jax.tree_util.tree_flatten(state)
        num_seeds = leaves[0].shape[0]
        self.flat = num_seeds < FLAT_BELOW if flat is None else flat
        self.is_float = [jnp.issubdtype(x.dtype, jnp.floating) for x in leaves]
        self.shapes = [x.shape[1:] for x in leaves]  # one seed's
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        vstep = jax.vmap(step)
        if not self.flat:
            self._call = jax.jit(vstep, donate_argnums=0)
            return

        def flat_step(carry, *inputs):
            state, outputs = vstep(self._unflatten(carry), *inputs)
            return self._flatten(state), outputs

        self._call = jax.jit(flat_step, donate_argnums=0)
        self._enter, self._leave = jax.jit(self._flatten), jax.jit(self._unflatten)

    def _flatten(self, state):
        leaves = jax.tree_util.tree_leaves(state)
        floats = [x.reshape(x.shape[0], -1) for x, f in zip(leaves, self.is_float) if f]
        return jnp.concatenate(floats, axis=1), [x for x, f in zip(leaves, self.is_float) if not f]

    def _unflatten(self, carry):
        flat, others = carry
        others, leaves, start = iter(others), [], 0
        for is_float, shape, size in zip(self.is_float, self.shapes, self.sizes):
            if is_float:
                leaves.append(flat[:, start:start + size].reshape(flat.shape[0], *shape))
                start += size
            else:
                leaves.append(next(others))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def enter(self, state):
        return self._enter(state) if self.flat else state

    def leave(self, carry):
        return self._leave(carry) if self.flat else carry

    def __call__(self, carry, *inputs):
        return self._call(carry, *inputs)


def pack_host_step(batch: dict, envs) -> np.ndarray:
    """One host env step (rlzoo.envs.HostVectorEnv) as one float32 array per env, [next obs, obs to act on next
    (the reset one after an episode's end), reward, terminated, ended]: one transfer for a streaming update."""
    return np.concatenate([batch["next_observations"], envs.obs, batch["rewards"][:, None], batch["dones"][:, None],
                           envs.ended[:, None].astype(np.float32)], axis=1)


def unpack_host_step(packed: jax.Array, obs_dim: int) -> dict:
    """`pack_host_step`'s row of one env, inside the jitted update."""
    return {"next_obs": packed[:obs_dim], "reset_obs": packed[obs_dim:2 * obs_dim], "reward": packed[2 * obs_dim],
            "terminated": packed[2 * obs_dim + 1] > 0.5, "ended": packed[2 * obs_dim + 2] > 0.5}


def observe_host_step(state: dict, host: dict, gamma: float, normalize_obs: bool = True, scale_rewards: bool = True,
                      horizon: int = 1000) -> dict:
    """What a streaming agent takes from one host env step (`unpack_host_step`), given its state's "obs_stats",
    "reward_scale" and "t": the next observation (normalized, time t + 1) its TD target bootstraps from, the reward
    (scaled by the running return's std, restarting at an episode's end), and the observation to act on next: the
    reset one (added to the statistics like every observation, time 0) after an end. Returns those as "next_obs",
    "reward" and "obs" with the updated "obs_stats", "reward_scale" and "t"."""
    ended = host["ended"]
    stats, next_obs = norm.observe(state["obs_stats"], host["next_obs"], state["t"] + 1, normalize_obs, horizon)
    reward_scale, reward = state["reward_scale"], host["reward"]
    if scale_rewards:
        reward_scale, reward = norm.reward_scale(reward_scale, reward, ended, gamma)
    reset_stats, reset_obs = norm.observe(stats, host["reset_obs"], jnp.float32(0), normalize_obs, horizon)
    stats, obs = norm.where_tree(ended, (reset_stats, reset_obs), (stats, next_obs))
    return {"next_obs": next_obs, "reward": reward, "obs": obs, "obs_stats": stats, "reward_scale": reward_scale,
            "t": jnp.where(ended, 0.0, state["t"] + 1)}
