"""Behaviour policies as jitted batch functions: uniform random actions, or a SAC actor saved by
algorithms/sac.py whose actions are sampled, a = tanh(mean + std * noise), as in D4RL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from envs import recipes
from envs.shared import rel, sha256
from rlzoo.networks import sample_tanh_gaussian
from rlzoo.policies import load_sac_actor


@dataclass
class Behaviour:
    """A jitted batch policy `act(params, key, t, obs[E, obs_dim]) -> actions[E, act_dim] in [-1, 1]`."""

    name: str  # "random", the policy file relative to the repository root, or a replay's description
    act: Callable | None
    params: object = None
    sha256: str | None = None
    meta: dict = field(default_factory=dict)


def random_behaviour(act_dim: int) -> Behaviour:
    import jax

    @jax.jit
    def act(params, key, t, obs):
        return jax.random.uniform(jax.random.fold_in(key, t), (obs.shape[0], act_dim), minval=-1.0, maxval=1.0)

    return Behaviour(recipes.RANDOM, act)


def policy_behaviour(
    path: Path, obs_dim: int, act_dim: int, deterministic: bool = False, seed_index: int = 0
) -> Behaviour:
    """A SAC `TanhGaussianActor` from a save_params file; `deterministic` acts with tanh(mean) instead."""
    import jax
    import jax.numpy as jnp

    actor, params, meta = load_sac_actor(path, obs_dim, act_dim, seed_index)

    @jax.jit
    def act(params, key, t, obs):
        mean, log_std = actor.apply(params, obs)
        if deterministic:
            return jnp.tanh(mean)
        return sample_tanh_gaussian(jax.random.fold_in(key, t), mean, log_std)[0]

    return Behaviour(rel(path), act, params, sha256(path), meta)


def make_behaviour(alias: str, obs_dim: int, act_dim: int) -> Behaviour:
    """The behaviour of a random or policy recipe (the caller has checked `recipes.unavailable(alias)`)."""
    recipe = recipes.RECIPES[alias]
    if recipe.behaviour == recipes.RANDOM:
        return random_behaviour(act_dim)
    return policy_behaviour(recipes.policy_path(recipe.behaviour), obs_dim, act_dim)
