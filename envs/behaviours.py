"""Behaviour policies as jitted batch functions: uniform random actions, or a SAC actor saved by
algorithms/sac.py whose actions are sampled, a = tanh(mean + std * noise), as in D4RL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs import recipes
from envs.shared import rel, sha256
from rlzoo.checkpoint import load_params
from rlzoo.errors import RlzooError
from rlzoo.networks import TanhGaussianActor, sample_tanh_gaussian


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


def _hidden_dims(path: Path, params, meta: dict) -> tuple[int, ...]:
    """The actor's hidden sizes: from the file's meta or, when it is empty, from the parameter shapes."""
    try:
        mlp = params["params"]["MLP_0"]
        hidden = meta.get("hidden_dims") or [mlp[f"Dense_{i}"]["kernel"].shape[-1] for i in range(len(mlp))]
    except (KeyError, TypeError) as err:
        raise RlzooError(
            f"{path} does not hold TanhGaussianActor parameters (no {err} entry); it must be an "
            "actor saved by algorithms/sac.py (policy.npz or policies/step_*.npz)"
        ) from err
    return tuple(int(h) for h in hidden)


def _fit_to_actor(path: Path, params, template, seed_index: int, obs_dim: int, act_dim: int, hidden: tuple):
    """`params` in the layout of `template`; files written during training have a leading seed axis on
    every parameter, of which seed `seed_index` is taken."""
    import jax

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
            f"{hidden}) on observations of size {obs_dim}; is it a policy for another env?"
        )

    if jax.tree_util.tree_structure(template) != jax.tree_util.tree_structure(params):
        raise RlzooError(
            f"{path} does not have the layout of a TanhGaussianActor{hidden}; it must be an "
            "actor saved by algorithms/sac.py"
        )
    return jax.tree_util.tree_map_with_path(pick, template, params)


def policy_behaviour(
    path: Path, obs_dim: int, act_dim: int, deterministic: bool = False, seed_index: int = 0
) -> Behaviour:
    """A SAC `TanhGaussianActor` from a save_params file; `deterministic` acts with tanh(mean) instead."""
    import jax
    import jax.numpy as jnp

    params, meta = load_params(path)
    hidden = _hidden_dims(path, params, meta)
    actor = TanhGaussianActor(act_dim, hidden)
    template = jax.eval_shape(actor.init, jax.random.key(0), jnp.zeros((1, obs_dim), jnp.float32))
    params = _fit_to_actor(path, params, template, seed_index, obs_dim, act_dim, hidden)

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
