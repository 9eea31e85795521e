"""Probabilistic dynamics ensemble and jitted model rollouts, shared by model-based offline RL (RAVL, MBRCSL).

The model is the one of MBPO (Janner et al. 2019) as OfflineRL-Kit and the RAVL / MBRCSL papers use it: 7 members
(5 elites) of 4x200 SiLU MLPs, each mapping normalized (s, a) to a diagonal Gaussian over [s' - s, r], its
log-variance soft-clamped between learned bounds (max_logvar starts at 0.5, min_logvar at -10, a 0.01 penalty keeps
them tight). Loss per member: mean((mu - y)^2 / var) + mean(log var) + L2 weight decay per layer (2.5e-5, 5e-5,
7.5e-5, 7.5e-5, 1e-4; 0.5 * wd * sum(W^2), kernels only) + the bound penalty; Adam, lr 1e-3, batches of 256.
Training (`fit`): a random holdout of min(20%, 1000) rows; every member its own bootstrap of the training rows,
reshuffled each epoch; all members train in one jitted, vmapped epoch (a lax.scan over minibatches); after each epoch
a member whose holdout MSE improved by more than 1% keeps those parameters as its best; training stops after 5
epochs in which no member improved; the elites are the members with the lowest holdout MSE.
Differences from OfflineRL-Kit: the log-variance bounds are per member (theirs are shared by all members), so that
each member's best parameters are complete; its hopper check reads `abs(obs[1:] < 100)` where MBPO's reads
`abs(obs[1:]) < 100`: we follow MBPO.

`load_or_train` keeps a trained model beside the Minari store, in
<Minari store>/../rlzoo-dynamics/<dataset ids>/seed<seed>-<hash of hyperparameters and corruption>/ (dynamics.npz
with the parameters and the record as its meta; record.json, the same record to read), and reuses it later; a
model trained on other data (its sha256 differs) or with other shapes is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlzoo.checkpoint import load_params, save_params
from rlzoo.errors import RlzooError
from rlzoo.networks import MLP
from rlzoo.options import check_option_ranges, option

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DynamicsConfig:
    """Hyperparameters of the ensemble and its training; defaults are the papers' (MBPO, OfflineRL-Kit, RAVL)."""

    num_members: int = option(7, ">= 1")
    """Ensemble members."""
    num_elites: int = option(5, ">= 1")
    """Members with the lowest holdout MSE, the ones rollouts sample from."""
    hidden_dims: tuple[int, ...] = option((200, 200, 200, 200), ">= 1")
    """Hidden layers of each member (SiLU)."""
    lr: float = option(1e-3, "> 0")
    """Adam learning rate."""
    weight_decay: tuple[float, ...] = option((2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4), ">= 0")
    """L2 coefficient per layer (hidden layers, then the output layer): 0.5 * wd * sum(W^2) joins the loss."""
    logvar_penalty: float = option(0.01, ">= 0")
    """Coefficient of sum(max_logvar) - sum(min_logvar) in the loss."""
    batch_size: int = option(256, ">= 1")
    """Minibatch size."""
    holdout_fraction: float = option(0.2, "(0, 1)")
    """Share of the rows held out for validation ..."""
    max_holdout: int = option(1000, ">= 1")
    """... but at most this many rows."""
    patience: int = option(5, ">= 1")
    """Stop after this many epochs in which no member improved."""
    min_improvement: float = option(0.01, "[0, 1)")
    """A member improved when its holdout MSE fell by more than this fraction of its best."""
    max_epochs: int | None = option(None, ">= 1")
    """Stop after this many epochs in any case (None: only early stopping, as the references)."""
    bootstrap: bool = True
    """Each member trains on its own bootstrap (rows drawn with replacement) of the training rows."""

    def check(self) -> None:
        """Refuse inconsistent options with what to change."""
        check_option_ranges(self)
        if self.num_elites > self.num_members:
            raise RlzooError(f"num_elites {self.num_elites} exceeds num_members {self.num_members}: the elites are "
                             "chosen among the members; lower num_elites or raise num_members.")
        if len(self.weight_decay) != len(self.hidden_dims) + 1:
            raise RlzooError(f"weight_decay has {len(self.weight_decay)} entries for {len(self.hidden_dims)} hidden "
                             f"layers: give one per hidden layer plus one for the output layer "
                             f"({len(self.hidden_dims) + 1}).")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> DynamicsConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class ModelOptions:
    """The --dynamics-* options of a model-based algorithm (RAVL, MBRCSL): the ensemble that load_or_train trains or
    reuses. `options_config` turns them into a DynamicsConfig."""

    dynamics_members: int = option(7, ">= 1")
    """Members of the dynamics ensemble (7)."""
    dynamics_elites: int = option(5, ">= 1")
    """Elites the rollouts sample from, a random one per step (5)."""
    dynamics_hidden_dims: tuple[int, ...] = option((200, 200, 200, 200), ">= 1")
    """Hidden layers of each dynamics member (4x200, SiLU)."""
    dynamics_weight_decay: tuple[float, ...] = option((2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4), ">= 0")
    """L2 coefficient per dynamics layer: one per hidden layer, then the output layer's."""
    dynamics_max_epochs: int | None = option(None, ">= 1")
    """Cap on the dynamics model's training epochs (None: early stopping only, as the references)."""
    dynamics_seed: int = option(0, ">= 0")
    """Seed of the dynamics model, which all agent seeds share (a saved model of the same data is reused)."""


def options_config(options: ModelOptions) -> DynamicsConfig:
    """The DynamicsConfig of an algorithm's --dynamics-* options; bad values get one paragraph naming the flags."""
    config = DynamicsConfig(num_members=options.dynamics_members, num_elites=options.dynamics_elites,
                            hidden_dims=tuple(options.dynamics_hidden_dims),
                            weight_decay=tuple(options.dynamics_weight_decay), max_epochs=options.dynamics_max_epochs)
    try:
        config.check()
    except RlzooError as err:
        raise RlzooError(f"the dynamics options (--dynamics-*): {err}") from None
    return config


def _member_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Truncated normal with std 1 / (2 sqrt(fan_in)) (OfflineRL-Kit's EnsembleLinear)."""
    return nn.initializers.truncated_normal(0.5 / np.sqrt(shape[0]))(key, shape, dtype)


class GaussianMember(nn.Module):
    """One member: normalized (s, a) -> (mean, log-variance) of [s' - s, r], the log-variance soft-clamped into
    [min_logvar, max_logvar], two learned vectors (x -> max - softplus(max - x), then min + softplus(x - min))."""

    out_dim: int
    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = MLP(self.hidden_dims, 2 * self.out_dim, kernel_init=_member_init, out_kernel_init=_member_init,
                activation=nn.silu)(x)
        mean, logvar = jnp.split(h, 2, axis=-1)
        max_logvar = self.param("max_logvar", nn.initializers.constant(0.5), (self.out_dim,))
        min_logvar = self.param("min_logvar", nn.initializers.constant(-10.0), (self.out_dim,))
        logvar = max_logvar - nn.softplus(max_logvar - logvar)
        logvar = min_logvar + nn.softplus(logvar - min_logvar)
        return mean, logvar


@flax.struct.dataclass
class Dynamics:
    """A trained ensemble: parameters with the member axis leading, the input normalization, the elites."""

    params: dict
    input_mean: jax.Array  # [obs_dim + act_dim]
    input_std: jax.Array
    elites: jax.Array  # int32 [num_elites], best member first
    obs_dim: int = flax.struct.field(pytree_node=False)
    act_dim: int = flax.struct.field(pytree_node=False)
    hidden_dims: tuple[int, ...] = flax.struct.field(pytree_node=False)

    @property
    def module(self) -> GaussianMember:
        return GaussianMember(self.obs_dim + 1, self.hidden_dims)


def predict(model: Dynamics, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every member's Gaussian over [s', r]: (mean, variance), each [members, ..., obs_dim + 1]."""
    x = (jnp.concatenate([obs, action], axis=-1) - model.input_mean) / model.input_std
    mean, logvar = jax.vmap(lambda p: model.module.apply(p, x))(model.params)
    mean = mean.at[..., : model.obs_dim].add(obs)
    return mean, jnp.exp(logvar)


def predictive_variance(model: Dynamics, obs: jax.Array, action: jax.Array) -> jax.Array:
    """Variance of the elites' mixture over [s', r] (mean aleatoric variance + variance of the means), [..., D]."""
    mean, var = predict(model, obs, action)
    mean, var = mean[model.elites], var[model.elites]
    return var.mean(0) + mean.var(0)


def _decay(params: dict, weight_decay: Sequence[float]) -> jax.Array:
    """sum over layers of 0.5 * wd_i * sum(W_i^2), kernels only (biases are not decayed)."""
    layers = params["params"]["MLP_0"]
    return sum(0.5 * wd * jnp.sum(jnp.square(layers[f"Dense_{i}"]["kernel"])) for i, wd in enumerate(weight_decay))


def holdout_split(n: int, config: DynamicsConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, holdout rows) of `n` transitions: a random min(holdout_fraction * n, max_holdout) held out."""
    n_holdout = min(int(n * config.holdout_fraction), config.max_holdout)
    if n_holdout < 1 or n - n_holdout < 1:
        raise RlzooError(f"{n} transitions are too few to train a dynamics model with a holdout share of "
                         f"{config.holdout_fraction}: both the training and the holdout part need rows. Use a larger "
                         "dataset or change holdout_fraction.")
    perm = np.asarray(jax.random.permutation(_keys(seed)[0], n))
    return np.sort(perm[n_holdout:]), np.sort(perm[:n_holdout])


def _keys(seed: int) -> list[jax.Array]:
    """The seed's keys for: the holdout split, initialization, bootstrap, epochs."""
    return list(jax.random.split(jax.random.PRNGKey(seed), 4))


def _make_epoch(module: GaussianMember, config: DynamicsConfig, n_train: int):
    """One jitted epoch of every member (vmapped): shuffle its bootstrap, a lax.scan of Adam steps over
    minibatches (the last one partial, as the references), then every member's holdout MSE and best-so-far."""
    tx = optax.adam(config.lr)
    batch = config.batch_size
    num_batches = -(-n_train // batch)
    valid = (jnp.arange(num_batches * batch) < n_train).astype(jnp.float32).reshape(num_batches, batch)

    def loss_fn(params, x, y, w):
        mean, logvar = module.apply(params, x)
        per_row = jnp.mean(jnp.square(mean - y) * jnp.exp(-logvar) + logvar, axis=-1)
        nll = jnp.sum(per_row * w) / jnp.sum(w)
        bounds = config.logvar_penalty * (jnp.sum(params["params"]["max_logvar"])
                                          - jnp.sum(params["params"]["min_logvar"]))
        return nll + _decay(params, config.weight_decay) + bounds

    def member_epoch(params, opt_state, rows, key, x, y):
        order = jnp.resize(rows[jax.random.permutation(key, n_train)], num_batches * batch).reshape(num_batches, batch)

        def step(carry, inp):
            params, opt_state = carry
            idx, w = inp
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx], w)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (order, valid))
        return params, opt_state, losses.mean()

    def holdout_mse(params, x, y):
        return jnp.mean(jnp.square(module.apply(params, x)[0] - y))

    @jax.jit
    def epoch(state: dict, key: jax.Array, data: dict) -> tuple[dict, dict]:
        keys = jax.random.split(key, config.num_members)
        params, opt_state, train_loss = jax.vmap(member_epoch, in_axes=(0, 0, 0, 0, None, None))(
            state["params"], state["opt_state"], state["rows"], keys, data["x"], data["y"])
        mse = jax.vmap(holdout_mse, in_axes=(0, None, None))(params, data["x_holdout"], data["y_holdout"])
        improved = mse < state["best_mse"] * (1.0 - config.min_improvement)
        keep = lambda new, old: jnp.where(improved.reshape(-1, *[1] * (new.ndim - 1)), new, old)
        best = jax.tree_util.tree_map(keep, params, state["best_params"])
        state = {**state, "params": params, "opt_state": opt_state, "best_params": best,
                 "best_mse": jnp.where(improved, mse, state["best_mse"])}
        return state, {"holdout_mse": mse, "improved": improved, "train_loss": train_loss}

    return tx, epoch


def fit(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_observations: np.ndarray,
        config: DynamicsConfig | None = None, seed: int = 0, progress: bool = True) -> tuple[Dynamics, dict]:
    """Train the ensemble on transitions (row i: s, a, r, s'), early-stopped on the holdout; (model, record)."""
    from tqdm.auto import tqdm

    config = config or DynamicsConfig()
    config.check()
    start = time.perf_counter()
    obs, act = np.asarray(observations, np.float32), np.asarray(actions, np.float32)
    rew, next_obs = np.asarray(rewards, np.float32).reshape(-1), np.asarray(next_observations, np.float32)
    n, obs_dim = obs.shape
    if act.ndim != 2 or len(act) != n or len(rew) != n or next_obs.shape != obs.shape:
        raise RlzooError(f"the transitions' shapes disagree: observations {obs.shape}, actions {act.shape}, rewards "
                         f"{rew.shape}, next_observations {next_obs.shape}; give one row per transition.")
    inputs = np.concatenate([obs, act], axis=-1)
    targets = np.concatenate([next_obs - obs, rew[:, None]], axis=-1)
    train_rows, holdout_rows = holdout_split(n, config, seed)
    mean = inputs[train_rows].mean(0)
    std = inputs[train_rows].std(0)
    std[std < 1e-12] = 1.0  # a constant input is left unscaled (OfflineRL-Kit's StandardScaler)
    scaled = ((inputs - mean) / std).astype(np.float32)
    data = {"x": jnp.asarray(scaled[train_rows]), "y": jnp.asarray(targets[train_rows]),
            "x_holdout": jnp.asarray(scaled[holdout_rows]), "y_holdout": jnp.asarray(targets[holdout_rows])}

    module = GaussianMember(obs_dim + 1, tuple(config.hidden_dims))
    _, k_init, k_boot, k_epochs = _keys(seed)
    m, n_train = config.num_members, len(train_rows)
    params = jax.vmap(module.init, in_axes=(0, None))(jax.random.split(k_init, m), data["x"][:1])
    tx, epoch = _make_epoch(module, config, n_train)
    rows = (jax.random.randint(k_boot, (m, n_train), 0, n_train) if config.bootstrap
            else jnp.tile(jnp.arange(n_train), (m, 1)))
    state = {"params": params, "opt_state": jax.vmap(tx.init)(params), "rows": rows.astype(jnp.int32),
             "best_params": params, "best_mse": jnp.full((m,), jnp.inf, jnp.float32)}

    best_epoch = np.zeros(m, np.int64)
    since, epochs = 0, 0
    bar = tqdm(total=config.max_epochs, desc=f"dynamics ({m} members)", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    while True:
        state, out = epoch(state, jax.random.fold_in(k_epochs, epochs), data)
        epochs += 1
        improved = np.asarray(out["improved"])
        best_epoch[improved] = epochs
        since = 0 if improved.any() else since + 1
        best = np.asarray(state["best_mse"])
        bar.update(1)
        bar.set_postfix(holdout_mse=f"{np.sort(best)[: config.num_elites].mean():.4g}", since_best=since)
        if since >= config.patience or (config.max_epochs is not None and epochs >= config.max_epochs):
            break
    bar.close()
    if not np.all(np.isfinite(best)):
        raise RlzooError(f"the dynamics ensemble's holdout loss was never finite for members "
                         f"{np.flatnonzero(~np.isfinite(best)).tolist()} (NaN or inf in training): check the data "
                         "for extreme values, or lower lr.")
    elites = np.argsort(best, kind="stable")[: config.num_elites].astype(np.int32)
    model = Dynamics(params=state["best_params"], input_mean=jnp.asarray(mean), input_std=jnp.asarray(std),
                     elites=jnp.asarray(elites), obs_dim=obs_dim, act_dim=act.shape[1],
                     hidden_dims=tuple(config.hidden_dims))
    record = {
        "format": FORMAT_VERSION, "seed": int(seed), "config": config.to_dict(), "obs_dim": obs_dim,
        "act_dim": int(act.shape[1]), "train_rows": int(n_train), "holdout_rows": len(holdout_rows),
        "holdout_mse": best.tolist(), "elites": elites.tolist(),
        "elite_holdout_mse": float(best[elites].mean()), "epochs": epochs, "best_epochs": best_epoch.tolist(),
        "stopped": "no improvement" if since >= config.patience else "max_epochs",
        "train_loss_last": np.asarray(out["train_loss"]).tolist(), "wall_s": round(time.perf_counter() - start, 2),
    }
    return model, record


# ---- rollouts ----------------------------------------------------------------------------------------------------

def rollout(model: Dynamics, policy_fn: Callable[[jax.Array, jax.Array], jax.Array], start_obs: jax.Array,
            key: jax.Array, horizon: int, termination_fn: Callable) -> dict[str, jax.Array]:
    """`horizon` model steps from each of the N `start_obs`, in one jitted lax.scan.

    Each step: actions = policy_fn(obs [N, obs_dim], key) -> [N, act_dim] (on raw observations); each rollout
    draws one elite at random and samples s', r from its Gaussian; done = termination_fn(obs, action, next_obs);
    a terminated rollout stays masked (its later rows repeat its last valid state). Returns arrays
    [horizon, N, ...]: observations, actions, rewards, next_observations, dones (float32), mask (bool: the step
    is real) and step (int32 index; step == horizon - 1 is a rollout's last step). policy_fn and termination_fn
    are static: called inside another jit with the policy's parameters as arguments it does not recompile."""
    return _rollout(model, policy_fn, jnp.asarray(start_obs, jnp.float32), key, horizon, termination_fn)


def elite_params(model: Dynamics) -> dict:
    """The elites' parameters (member axis leading), what sampled model steps draw from."""
    return jax.tree_util.tree_map(lambda p: p[model.elites], model.params)


def sample_step(model: Dynamics, elites: dict, obs: jax.Array, action: jax.Array, k_member: jax.Array,
                k_noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One sampled model step for each of the N rows: a random elite per row (`elites` = elite_params(model)) and
    a draw from its Gaussian; (next observations [N, obs_dim], rewards [N])."""
    x = (jnp.concatenate([obs, action], axis=-1) - model.input_mean) / model.input_std
    mean, logvar = jax.vmap(lambda p: model.module.apply(p, x))(elites)  # [elites, N, obs_dim + 1]
    member = jax.random.randint(k_member, (1, obs.shape[0], 1), 0, model.elites.shape[0])
    mean = jnp.take_along_axis(mean, member, axis=0)[0]
    logvar = jnp.take_along_axis(logvar, member, axis=0)[0]
    sample = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_noise, mean.shape)
    return obs + sample[:, :-1], sample[:, -1]


@partial(jax.jit, static_argnames=("policy_fn", "horizon", "termination_fn"))
def _rollout(model, policy_fn, start_obs, key, horizon, termination_fn):
    n = start_obs.shape[0]
    elites = elite_params(model)

    def step(carry, t):
        obs, alive, key = carry
        key, k_pi, k_member, k_noise = jax.random.split(key, 4)
        action = policy_fn(obs, k_pi).astype(jnp.float32)
        next_obs, reward = sample_step(model, elites, obs, action, k_member, k_noise)
        done = jnp.asarray(termination_fn(obs, action, next_obs), bool).reshape(n)
        out = {"observations": obs, "actions": action, "rewards": reward, "next_observations": next_obs,
               "dones": (done & alive).astype(jnp.float32), "mask": alive, "step": jnp.full((n,), t, jnp.int32)}
        alive_next = alive & ~done
        return (jnp.where(alive_next[:, None], next_obs, obs), alive_next, key), out

    _, out = jax.lax.scan(step, (start_obs, jnp.ones((n,), bool), key), jnp.arange(horizon))
    return out


# ---- termination functions (batched, on next_obs; MBPO's, for Gymnasium v5 observations) ------------------------

def never_terminates(obs: jax.Array, action: jax.Array, next_obs: jax.Array) -> jax.Array:
    """HalfCheetah (and any task without termination): never done."""
    return jnp.zeros(next_obs.shape[:-1], bool)


def hopper_terminates(obs: jax.Array, action: jax.Array, next_obs: jax.Array) -> jax.Array:
    """Hopper: done unless finite, |obs[1:]| < 100, height obs[0] > 0.7 and |angle obs[1]| < 0.2."""
    height, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (jnp.isfinite(next_obs).all(-1) & (jnp.abs(next_obs[..., 1:]) < 100).all(-1) & (height > 0.7)
               & (jnp.abs(angle) < 0.2))
    return ~healthy


def walker2d_terminates(obs: jax.Array, action: jax.Array, next_obs: jax.Array) -> jax.Array:
    """Walker2d: done unless all of obs in (-100, 100), height obs[0] in (0.8, 2.0) and angle obs[1] in (-1, 1)."""
    height, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = ((next_obs > -100).all(-1) & (next_obs < 100).all(-1) & (height > 0.8) & (height < 2.0)
               & (angle > -1.0) & (angle < 1.0))
    return ~healthy


def ant_terminates(obs: jax.Array, action: jax.Array, next_obs: jax.Array) -> jax.Array:
    """Ant: done unless finite and the torso height obs[0] in [0.2, 1.0]."""
    z = next_obs[..., 0]
    return ~(jnp.isfinite(next_obs).all(-1) & (z >= 0.2) & (z <= 1.0))


TERMINATION_FNS = {"halfcheetah": never_terminates, "hopper": hopper_terminates, "walker2d": walker2d_terminates,
                   "ant": ant_terminates, "pointmaze": never_terminates, "never": never_terminates}


def termination_fn(name: str) -> Callable:
    """The termination function of a dataset or env name: halfcheetah-medium, mujoco/hopper/medium-v0, Walker2d-v5,
    a dataset path, ... (the task is a word of the name); "never" for a task that never terminates."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    found = [task for task in TERMINATION_FNS if task in words]
    if len(found) != 1:
        raise RlzooError(f"no termination function for '{name}': " + ("it names several tasks. " if found else "")
                         + f"the known tasks are {', '.join(TERMINATION_FNS)} (a word of the dataset or env name). "
                         "For a task without termination pass 'never'; for another task write a function "
                         "(obs, action, next_obs) -> done and pass it to rollout.")
    return TERMINATION_FNS[found[0]]


def termination_for(choice: str, env: str, env_id: str) -> Callable:
    """The rollouts' termination function of an algorithm's --termination: `choice` itself, or for "auto" the one
    of the task the dataset name `env` or its env id `env_id` names."""
    if choice != "auto":
        return termination_fn(choice)
    for name in (env, env_id):
        try:
            return termination_fn(name)
        except RlzooError:
            pass
    raise RlzooError(f"--termination auto finds no termination function for '{env}' (played in {env_id}), and the "
                     "model's rollouts must know when an episode ends. Pass --termination with one of "
                     f"{', '.join(TERMINATION_FNS)} ('never' for a task that never terminates).")


# ---- saving, loading, reuse --------------------------------------------------------------------------------------

def dataset_identity(dataset) -> dict:
    """What identifies the data a model was trained on: the Minari ids, size, the data's sha256, build records."""
    from rlzoo.corruption import data_sha256

    summary = dataset.summary
    return {"dataset": dataset.name, "dataset_ids": list(dataset.dataset_ids), "source": dataset.source,
            "transitions": len(dataset), "data_sha256": data_sha256(dataset), "parts": summary.get("parts", []),
            "corruption": _corruption_key(dataset)}


def _corruption_key(dataset) -> dict | None:
    record = dataset.metadata.get("corruption")
    return None if not record else {k: v for k, v in record.items() if k != "cache"}


def dynamics_root() -> Path:
    """<Minari store>/../rlzoo-dynamics: beside the dataset store (as rlzoo-corrupted), never in a repository."""
    from rlzoo.datasets import datasets_root

    return datasets_root().parent / "rlzoo-dynamics"


def model_dir(dataset, config: DynamicsConfig, seed: int) -> Path:
    """Where `load_or_train` keeps the model of `dataset` with `config` and `seed`."""
    spec = {"config": config.to_dict(), "seed": int(seed), "corruption": _corruption_key(dataset),
            "format": FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = "+".join(i.strip("/").replace("/", "_") for i in dataset.dataset_ids)
    return dynamics_root() / name / f"seed{seed}-{digest}"


def save(model: Dynamics, record: dict, directory: str | Path) -> Path:
    """Write dynamics.npz (parameters, normalization, elites; the record as its meta) and record.json, atomically
    (a new folder renamed into place, replacing an older model)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=directory.name + ".tmp"))
    try:
        arrays = {"params": model.params, "input_mean": model.input_mean, "input_std": model.input_std,
                  "elites": model.elites}
        save_params(tmp / "dynamics.npz", jax.device_get(arrays), meta=record)
        (tmp / "record.json").write_text(json.dumps(record, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load(directory: str | Path, dataset=None, config: DynamicsConfig | None = None) -> tuple[Dynamics, dict]:
    """A saved model and its record, bit for bit; refused if it was trained on other data than `dataset` or with
    other hyperparameters than `config` (when given), or if its arrays do not have the shapes its record says."""
    directory = Path(directory)
    path = directory / "dynamics.npz"
    if not path.is_file():
        raise RlzooError(f"no dynamics model in {directory} (dynamics.npz is missing): train one with "
                         "rlzoo.dynamics.load_or_train, or point at the folder it printed.")
    arrays, record = load_params(path)
    saved_config = DynamicsConfig.from_dict(record["config"])
    redo = f"Delete {directory} (or pass retrain=True to load_or_train) to train a new model"
    if config is not None and config != saved_config:
        diff = {k: (v, getattr(config, k)) for k, v in dataclasses.asdict(saved_config).items()
                if getattr(config, k) != v}
        raise RlzooError(f"the dynamics model in {directory} was trained with other hyperparameters than asked "
                         f"(saved vs asked: {'; '.join(f'{k} {a} vs {b}' for k, (a, b) in diff.items())}). {redo}, "
                         "or ask for the saved hyperparameters.")
    if dataset is not None:
        saved, now = record.get("dataset") or {}, dataset_identity(dataset)
        dims = (int(dataset.observations.shape[1]), int(dataset.actions.shape[1]))
        if dims != (record["obs_dim"], record["act_dim"]):
            raise RlzooError(f"the dynamics model in {directory} maps obs_dim {record['obs_dim']} / act_dim "
                             f"{record['act_dim']}, but '{dataset.name}' has obs_dim {dims[0]} / act_dim {dims[1]}: "
                             f"it belongs to other data. {redo}.")
        changed = [k for k in ("dataset_ids", "transitions", "data_sha256", "corruption") if saved.get(k) != now[k]]
        if changed:
            raise RlzooError(
                f"the dynamics model in {directory} was trained on other data than '{dataset.name}' now holds: saved "
                f"{saved.get('dataset_ids')} ({saved.get('transitions')} transitions, sha256 "
                f"{str(saved.get('data_sha256'))[:12]}, built {_built(saved)}) vs now {now['dataset_ids']} "
                f"({now['transitions']} transitions, sha256 {now['data_sha256'][:12]}, built {_built(now)}); "
                f"{', '.join(changed)} differ (the dataset was rebuilt or replaced). {redo} on the data as it is now, "
                "or restore the dataset it was trained on.")
    module = GaussianMember(record["obs_dim"] + 1, saved_config.hidden_dims)
    dummy = jnp.zeros((1, record["obs_dim"] + record["act_dim"]), jnp.float32)
    template = jax.eval_shape(lambda k: jax.vmap(module.init, in_axes=(0, None))(k, dummy),
                              jax.random.split(jax.random.PRNGKey(0), saved_config.num_members))
    expected = {"params": _shapes(template), "input_mean": (record["obs_dim"] + record["act_dim"],),
                "input_std": (record["obs_dim"] + record["act_dim"],), "elites": (saved_config.num_elites,)}
    found = {"params": _shapes(arrays.get("params", {})),
             **{k: tuple(np.shape(arrays[k])) if k in arrays else None for k in ("input_mean", "input_std", "elites")}}
    if found != expected:
        raise RlzooError(f"the arrays in {path} do not have the shapes its record implies (found {found}, expected "
                         f"{expected}): the file is damaged or was written by other code. {redo}.")
    model = Dynamics(params=jax.tree_util.tree_map(jnp.asarray, arrays["params"]),
                     input_mean=jnp.asarray(arrays["input_mean"]), input_std=jnp.asarray(arrays["input_std"]),
                     elites=jnp.asarray(arrays["elites"]), obs_dim=record["obs_dim"], act_dim=record["act_dim"],
                     hidden_dims=tuple(saved_config.hidden_dims))
    return model, record


def _built(identity: dict) -> str:
    """A short word on how the data were built: the local builds' recipes, else 'unrecorded'."""
    recipes = [f"{p.get('dataset_id')}: seed {p['recipe'].get('seed')}, {p.get('built_on')}"
               for p in identity.get("parts") or [] if p.get("recipe")]
    return "; ".join(recipes) or "unrecorded"


def load_or_train(dataset, config: DynamicsConfig | None = None, seed: int = 0, directory: str | Path | None = None,
                  retrain: bool = False, progress: bool = True) -> tuple[Dynamics, dict]:
    """The model of `dataset` (an OfflineDataset or a dataset name) with `config` and `seed`: loaded from
    `directory` (default `model_dir(...)`) when it is there and was trained on the same data, else trained and
    saved there. A saved model of other data is refused unless `retrain` replaces it. The record says `reused`."""
    if isinstance(dataset, str):
        from rlzoo import datasets

        dataset = datasets.load(dataset)
    config = config or DynamicsConfig()
    config.check()
    directory = Path(directory) if directory is not None else model_dir(dataset, config, seed)
    if (directory / "dynamics.npz").is_file() and not retrain:
        model, record = load(directory, dataset=dataset, config=config)
        if record["seed"] != seed:
            raise RlzooError(f"the dynamics model in {directory} was trained with seed {record['seed']}, not {seed}: "
                             "pass its seed, or another directory.")
        print(f"[rlzoo] dynamics: reusing the model in {directory} (holdout MSE of the elites "
              f"{record['elite_holdout_mse']:.4g}, {record['epochs']} epochs)")
        return model, {**record, "reused": True, "directory": str(directory)}
    model, record = fit(dataset.observations, dataset.actions, dataset.rewards, dataset.next_observations,
                        config, seed, progress)
    from rlzoo.provenance import info

    record = {**record, "dataset": dataset_identity(dataset), "built_with": info()}
    save(model, record, directory)
    print(f"[rlzoo] dynamics: trained {record['epochs']} epochs (holdout MSE of the elites "
          f"{record['elite_holdout_mse']:.4g}); saved in {directory}")
    return model, {**record, "reused": False, "directory": str(directory)}
