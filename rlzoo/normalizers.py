"""Streaming normalizers for one-transition-at-a-time learning (stream-x), as pure functions whose state lives in
the jitted carry and is checkpointed with it.

- `obs_normalize`: Welford's running mean and sample variance of every observation seen (the first one included),
  x -> (x - mean) / sqrt(var + eps); the variance is 1 until two samples have been seen.
- `reward_scale`: r -> r / sqrt(var(G) + eps), with G the running discounted return G <- gamma (1 - end) G + r
  (restarted at an episode's end, that step's reward kept) and var its Welford variance.
- `time_feature`: -0.5 + t / horizon, the episode's elapsed time as an extra input (not normalized).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MeanVar(NamedTuple):
    mean: jax.Array
    m2: jax.Array  # sum of squared deviations
    count: jax.Array


def mean_var_init(shape: tuple[int, ...] = ()) -> MeanVar:
    return MeanVar(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.float32(0.0))


def mean_var_update(stats: MeanVar, x: jax.Array) -> MeanVar:
    count = stats.count + 1.0
    mean = stats.mean + (x - stats.mean) / count
    return MeanVar(mean, stats.m2 + (x - stats.mean) * (x - mean), count)


def variance(stats: MeanVar) -> jax.Array:
    """Sample variance (n - 1); 1 before two samples."""
    return jnp.where(stats.count < 2, 1.0, stats.m2 / jnp.maximum(stats.count - 1.0, 1.0))


def obs_normalize(stats: MeanVar, obs: jax.Array, eps: float = 1e-8) -> tuple[MeanVar, jax.Array]:
    """Add `obs` to the statistics, then normalize it with them."""
    stats = mean_var_update(stats, obs)
    return stats, (obs - stats.mean) / jnp.sqrt(variance(stats) + eps)


class RewardScale(NamedTuple):
    ret: jax.Array  # running discounted return
    stats: MeanVar  # of that return


def reward_scale_init() -> RewardScale:
    return RewardScale(jnp.float32(0.0), mean_var_init())


def reward_scale(state: RewardScale, reward: jax.Array, end: jax.Array, gamma: float,
                 eps: float = 1e-8) -> tuple[RewardScale, jax.Array]:
    """Update the running discounted return with `reward` (restarting it when this step `end`s the episode) and
    its variance, then divide the reward by that return's standard deviation."""
    ret = state.ret * gamma * (1.0 - end.astype(jnp.float32)) + reward
    stats = mean_var_update(state.stats, ret)
    return RewardScale(ret, stats), reward / jnp.sqrt(variance(stats) + eps)


def time_feature(t: jax.Array, horizon: int = 1000) -> jax.Array:
    """The episode's elapsed steps as one input in [-0.5, 0.5] over `horizon` steps."""
    return (-0.5 + t / horizon).astype(jnp.float32)


def where_tree(cond: jax.Array, a, b):
    """`a` where `cond`, else `b`, leaf by leaf (a scalar `cond` for one seed's state)."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def observe(stats: MeanVar, raw_obs: jax.Array, t: jax.Array | None = None, normalize: bool = True,
            horizon: int = 1000) -> tuple[MeanVar, jax.Array]:
    """A streaming agent's input: the observation, normalized with statistics that include it (if `normalize`),
    and the time feature of elapsed step `t` appended (unless `t` is None)."""
    raw_obs = raw_obs.astype(jnp.float32)
    if normalize:
        stats, raw_obs = obs_normalize(stats, raw_obs)
    if t is None:
        return stats, raw_obs
    return stats, jnp.concatenate([raw_obs, time_feature(t, horizon)[None]])
