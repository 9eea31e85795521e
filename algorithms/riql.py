"""RIQL — Robust IQL (Yang et al., 2023, "Towards Robust Offline Reinforcement Learning under Diverse Data
Corruption"), offline.

IQL (Kostrikov et al.) plus three changes that make it robust to corrupted data (--corruption-* corrupts any
offline algorithm's dataset the paper's way, rlzoo.corruption):
  1. observation normalization with the mean and std of observations and next observations together (+1e-3), of
     the data trained on (corrupted or not), as the authors' code (--obs-stats-with-next);
  2. a Huber loss for Q (not V, whose expectile loss stays squared) toward r + gamma (1 - terminal) V(s'), the
     targets clamped to [-100, 1000] (--q-target-clip; in the authors' code `_update_q` clamps r + gamma V(s')
     before the loss): --huber-delta is the authors' threshold 1/sigma^2. Their loss is huber_delta(u) / delta;
     the mse head's is 2 huber_delta(u) (the squared error inside delta), a constant factor 2 delta that Adam's
     normalization takes out (up to its eps);
  3. an ensemble of --num-critics Q's (networks.Ensemble, all trained on the same target) whose alpha-quantile
     over members replaces IQL's min as V's expectile target and as the Q in the actor's advantage
     exp(beta (Q_alpha(s, a) - V(s))), computed as the authors' torch.quantile: linear interpolation between the
     sorted members at position alpha (N - 1) (jnp.quantile, method "linear"), so alpha = 0 is the minimum.
Everything else is rlzoo's IQL: expectile 0.7, beta 3.0, weights clipped at 100, lr 3e-4 with the actor's
cosine-decayed, V updated first, then the actor with V before its step, then the critics toward the updated V
(the authors' code takes V(s') before V's step; IQL's order is kept so that RIQL differs from IQL only as above).
As the authors' code, rewards are not scaled (their `modify_reward` is never called) and the actor is
deterministic (tanh MLP) with the advantage-weighted squared error to the dataset action as its loss
(--no-deterministic-actor: IQL's Gaussian and log-likelihood).

Per-setting hyperparameters (the authors' RIQL_config.py, tuned on the medium-replay datasets): the Huber
threshold, the quantile alpha and the ensemble size depend on the task AND the corruption. `Config.TASKS` holds
them keyed by "<task>/<corruption mode>/<corruption target>" (`TASK_KEY`, read by rlzoo.cli), so that e.g.
`--env walker2d-medium-replay --corruption-target rewards` starts from alpha 0.1 and sigma 3; flags still win.

Value heads (--value-head): the ensemble and the quantile compose with any head (the quantile is over the
members' values); --huber-delta applies to the mse head only: a classification head's cross-entropy is already
robust in the sense the Huber loss gives RIQL (its gradient in the logits, p - target distribution, is bounded
however far the target lies), so it is used as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from rlzoo import heads, networks, offline
from rlzoo.cli import run_cli
from rlzoo.options import option


def _setting(sigma: float, alpha: float, critics: int = 5) -> dict:
    """One per-setting row of the authors' table: Huber sigma (threshold 1/sigma^2), quantile alpha, ensemble size."""
    return {"huber_delta": round(1.0 / sigma**2, 6), "quantile": alpha, "num_critics": critics}


# (sigma, alpha, N) per task, corruption mode and target: the authors' RIQL_config.py.
_TABLE = {
    "random": {
        "observations": {"halfcheetah": (0.1, 0.1), "walker2d": (0.1, 0.25), "hopper": (0.1, 0.25, 3)},
        "actions": {"halfcheetah": (0.5, 0.25, 3), "walker2d": (0.5, 0.1), "hopper": (0.1, 0.25)},
        "rewards": {"halfcheetah": (3.0, 0.25), "walker2d": (3.0, 0.1), "hopper": (1.0, 0.25, 3)},
        "dynamics": {"halfcheetah": (3.0, 0.25), "walker2d": (1.0, 0.25, 3), "hopper": (1.0, 0.5)},
    },
    "adversarial": {
        "observations": {"halfcheetah": (0.1, 0.1), "walker2d": (1.0, 0.25), "hopper": (1.0, 0.25)},
        "actions": {"halfcheetah": (1.0, 0.1), "walker2d": (1.0, 0.1), "hopper": (1.0, 0.25)},
        "rewards": {"halfcheetah": (1.0, 0.1), "walker2d": (3.0, 0.1), "hopper": (0.1, 0.25)},
        "dynamics": {"halfcheetah": (1.0, 0.1), "walker2d": (1.0, 0.25), "hopper": (1.0, 0.5)},
    },
}


@dataclass
class Config(heads.HeadOptions, offline.OfflineConfig):
    """RIQL (robust IQL). Per-setting defaults: --huber-delta, --quantile and --num-critics follow the authors'
    table for the task (--env: halfcheetah-*, walker2d-*, hopper-*) AND the corruption (--corruption-mode,
    --corruption-target), e.g. walker2d-medium-replay with random reward corruption starts from quantile 0.1 and
    huber-delta 1/9; the run prints which were applied, and flags override them."""

    TASK_KEY: ClassVar[str] = "{env}/{corruption_mode}/{corruption_target}"
    TASKS: ClassVar[dict] = {
        f"{task}-*/{mode}/{target}": _setting(*row)
        for mode, targets in _TABLE.items() for target, tasks in targets.items() for task, row in tasks.items()
    }

    num_critics: int = option(5, ">= 1")
    """Q-ensemble size N (5; the authors use 3 in a few settings, see TASKS)."""
    quantile: float = option(0.25, "[0, 1]")
    """alpha: V's target (and the actor's Q) is the alpha-quantile of the ensemble's target Q's (0.25; 0.1-0.5 per
    setting); 0 is the minimum."""
    huber_delta: float = option(1.0, ">= 0")
    """Huber threshold of the Q loss (mse head), the authors' 1/sigma^2 (sigma 1 by default; 0.1-3 per setting,
    i.e. 100-0.11); 0: squared error."""
    q_target_clip: tuple[float, float] = option((-100.0, 1000.0), "any")
    """Q's TD targets are clamped to this interval (the paper's [-100, 1000])."""
    obs_stats_with_next: bool = True
    """Normalization statistics of observations and next observations together (RIQL's code)."""
    deterministic_actor: bool = True
    """A deterministic tanh actor with advantage-weighted squared error (the authors' code); else IQL's Gaussian."""
    expectile: float = option(0.7, "(0, 1)")
    """Expectile of V's regression onto the ensemble's quantile."""
    beta: float = option(3.0, ">= 0")
    """Inverse temperature of the advantage weights."""
    max_weight: float = option(100.0, "> 0")
    """Clip of the exponentiated advantage weights."""
    gamma: float = option(0.99, "[0, 1]")
    """Discount."""
    tau: float = option(0.005, "(0, 1]")
    """Polyak rate of the target critics."""
    actor_lr: float = option(3e-4, "> 0")
    """Actor learning rate (cosine-decayed to 0 over total_steps)."""
    critic_lr: float = option(3e-4, "> 0")
    """Q learning rate."""
    value_lr: float = option(3e-4, "> 0")
    """V learning rate."""
    hidden_dims: tuple[int, ...] = option((256, 256), ">= 1")
    """Hidden layers of actor, critics and value."""
    scale_rewards: bool = False
    """Scale rewards by 1000 / (max - min return of complete episodes) (the authors' RIQL does not)."""


def make_networks(config: Config, act_dim: int):
    hidden, out_dim = tuple(config.hidden_dims), heads.num_outputs(config)
    actor = (networks.DeterministicActor(act_dim, hidden) if config.deterministic_actor
             else networks.GaussianActor(act_dim, hidden))
    critic = networks.Ensemble(networks.Critic, config.num_critics, {"hidden_dims": hidden, "out_dim": out_dim})
    value = networks.ValueCritic(hidden, out_dim)
    return actor, critic, value


def init_state(config: Config, key: jax.Array, obs_dim: int, act_dim: int) -> dict:
    actor, critic, value = make_networks(config, act_dim)
    k_actor, k_critic, k_value, key = jax.random.split(key, 4)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    critic_params = critic.init(k_critic, obs, act)
    actor_lr = optax.cosine_decay_schedule(config.actor_lr, config.total_steps)
    return {
        "actor": TrainState.create(apply_fn=actor.apply, params=actor.init(k_actor, obs), tx=optax.adam(actor_lr)),
        "critic": TrainState.create(apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.critic_lr)),
        "target_params": jax.tree_util.tree_map(lambda x: x.copy(), critic_params),
        "value": TrainState.create(apply_fn=value.apply, params=value.init(k_value, obs),
                                   tx=optax.adam(config.value_lr)),
        "key": key,
    }


def ensemble_quantile(q: jax.Array, alpha: float) -> jax.Array:
    """The alpha-quantile over the members (axis 0) with linear interpolation between the sorted members, as
    torch.quantile: alpha 0 is the minimum, 1 the maximum, 0.5 the median. It lies between the minimum and the
    maximum and grows with alpha; it is not always below the mean (members 0, 1, 1, 1, 1 have mean 0.8 and
    0.25-quantile 1), only for members spread symmetrically (or on average over an ensemble's rows)."""
    return jnp.quantile(q, alpha, axis=0, method="linear")


def expectile_weight(diff: jax.Array, expectile: float) -> jax.Array:
    """|tau - 1(diff < 0)|, with diff = target - prediction."""
    return jnp.where(diff > 0, expectile, 1.0 - expectile)


def make_update(config: Config):
    """One RIQL step (value, then actor, then critics, then targets) on a minibatch, for one seed."""

    head = heads.make_head(config)  # Q's: the Huber loss with --huber-delta (mse head)
    v_head = dataclasses.replace(head, huber_delta=0.0)  # V's expectile regression stays squared, as the paper's
    lo, hi = config.q_target_clip

    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic, value = state["actor"], state["critic"], state["value"]
        obs, act = batch["observations"], batch["actions"]
        target_all = head.value(critic.apply_fn(state["target_params"], obs, act))  # [N, batch]
        target_q = ensemble_quantile(target_all, config.quantile)

        # Value: upper expectile of the ensemble's alpha-quantile over dataset actions.
        def value_loss(params):
            out = value.apply_fn(params, obs)
            v = v_head.value(out)
            return (expectile_weight(target_q - v, config.expectile) * v_head.loss(out, target_q)).mean(), v

        (v_loss, v), grads = jax.value_and_grad(value_loss, has_aux=True)(value.params)
        value = value.apply_gradients(grads=grads)

        # Actor: advantage-weighted regression onto dataset actions (advantage of the quantile, V before its step).
        weights = jnp.minimum(jnp.exp(config.beta * (target_q - v)), config.max_weight)

        def actor_loss(params):
            if config.deterministic_actor:
                bc = jnp.sum((actor.apply_fn(params, obs) - act / config.max_action) ** 2, axis=-1)
                return (weights * bc).mean()
            mean, log_std = actor.apply_fn(params, obs)
            return -(weights * networks.gaussian_log_prob(mean, log_std, act / config.max_action)).mean()

        pi_loss, grads = jax.value_and_grad(actor_loss)(actor.params)
        actor = actor.apply_gradients(grads=grads)

        # Critics: each member toward the same clamped r + gamma V(s'), with the head's (Huber) loss.
        next_v = head.value(value.apply_fn(value.params, batch["next_observations"]))
        target = jnp.clip(batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_v, lo, hi)

        def critic_loss(params):
            out = critic.apply_fn(params, obs, act)
            return head.loss(out, target).mean(1).sum(), head.value(out)

        (q_loss, q_all), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
        critic = critic.apply_gradients(grads=grads)

        target_params = optax.incremental_update(critic.params, state["target_params"], config.tau)
        new_state = {**state, "actor": actor, "critic": critic, "value": value, "target_params": target_params}
        metrics = {"value_loss": v_loss, "actor_loss": pi_loss, "critic_loss": q_loss, "q_mean": q_all.mean(),
                   "q_std": target_all.std(0).mean(), "v_mean": v.mean(), "weight_mean": weights.mean()}
        return new_state, metrics

    return update


def make_train(config: Config):
    """`train_chunk(states, data)`: `config.chunk` updates per seed in one jitted scan, seeds vmapped."""
    return offline.make_train(make_update(config), config)


def make_policy(config: Config, act_dim: int):
    """Evaluation acts with the deterministic actor (or the Gaussian's mean), times the action bound."""
    actor, _, _ = make_networks(config, act_dim)
    if config.deterministic_actor:
        return lambda params, obs: config.max_action * actor.apply(params, obs)
    return lambda params, obs: config.max_action * actor.apply(params, obs)[0]


def main(config: Config) -> dict:
    return offline.train(config, "riql", init_state, make_train, make_policy)


if __name__ == "__main__":
    run_cli(main, Config)
