"""Actors saved by algorithms/sac.py (`Run.save_policy`), loaded back for acting: the dataset builders'
behaviour policies, and the fixed policy whose value stream TD learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlzoo.checkpoint import load_params
from rlzoo.errors import RlzooError
from rlzoo.networks import TanhGaussianActor


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


def load_sac_actor(path: str | Path, obs_dim: int, act_dim: int, seed_index: int = 0):
    """(TanhGaussianActor, params, meta) from a save_params file of a SAC actor; a file written with a seed axis
    gives seed `seed_index`. A file that is not such an actor, or is one for other dimensions, is refused."""
    import jax
    import jax.numpy as jnp

    path = Path(path)
    params, meta = load_params(path)
    hidden = _hidden_dims(path, params, meta)
    actor = TanhGaussianActor(act_dim, hidden)
    template = jax.eval_shape(actor.init, jax.random.key(0), jnp.zeros((1, obs_dim), jnp.float32))
    return actor, _fit_to_actor(path, params, template, seed_index, obs_dim, act_dim, hidden), meta
