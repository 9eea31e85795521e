"""TD3+BC — TD3 with a behaviour-cloning term (Fujimoto & Gu, 2021), offline.

TD3 on the dataset, plus one term that keeps the deterministic actor near the data's actions:
  critics  Q_i(s, a) <- r + gamma (1 - terminal) min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c)))
           (twin target critics, target policy smoothing with eps ~ N(0, sigma^2))
  actor    max  lambda Q_1(s, pi(s)) - (pi(s) - a)^2,   lambda = alpha / mean|Q_1(s, pi(s))| (no gradient)
           every `policy_freq` critic steps, followed by Polyak updates of actor and critic targets.
The normalization by mean|Q| makes alpha a scale-free trade-off between RL and imitation.

Defaults are the paper's: alpha 2.5, policy noise 0.2, noise clip 0.5, policy delay 2, lr 3e-4,
2x256 MLPs, batch 256, 1M steps, states normalized with the dataset mean/std (eps 1e-3), rewards unscaled.
One `update` here is `policy_freq` critic steps and one actor step, so each counts as `policy_freq`
gradient steps (the paper's "iterations"). With a classification value head (--value-head, rlzoo.heads) the
critics are trained with the head's loss and every Q above (the target's min, the actor's Q_1 and lambda's
mean |Q|) is the head's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from rlzoo import heads, networks, offline
from rlzoo.cli import run_cli
from rlzoo.options import option


@dataclass
class Config(heads.HeadOptions, offline.OfflineConfig):
    alpha: float = option(2.5, ">= 0")
    """Weight of the Q term against behaviour cloning (lambda = alpha / mean|Q|)."""
    policy_noise: float = option(0.2, ">= 0")
    """Std of the target policy smoothing noise (times max_action)."""
    noise_clip: float = option(0.5, ">= 0")
    """Clip of the target policy smoothing noise (times max_action)."""
    policy_freq: int = option(2, ">= 1")
    """Critic steps per actor step (and per target update)."""
    gamma: float = option(0.99, "[0, 1]")
    """Discount."""
    tau: float = option(0.005, "(0, 1]")
    """Polyak rate of the target actor and critics."""
    actor_lr: float = option(3e-4, "> 0")
    """Actor learning rate."""
    critic_lr: float = option(3e-4, "> 0")
    """Critic learning rate."""
    hidden_dims: tuple[int, ...] = option((256, 256), ">= 1")
    """Hidden layers of actor and critics."""


def make_networks(config: Config, act_dim: int):
    hidden = tuple(config.hidden_dims)
    actor = networks.DeterministicActor(act_dim, hidden, config.max_action)
    critic = networks.Ensemble(networks.Critic, 2, {"hidden_dims": hidden, "out_dim": heads.num_outputs(config)})
    return actor, critic


def init_state(config: Config, key: jax.Array, obs_dim: int, act_dim: int) -> dict:
    actor, critic = make_networks(config, act_dim)
    k_actor, k_critic, key = jax.random.split(key, 3)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    actor_params, critic_params = actor.init(k_actor, obs), critic.init(k_critic, obs, act)
    copy = lambda tree: jax.tree_util.tree_map(lambda x: x.copy(), tree)
    return {
        "actor": TrainState.create(apply_fn=actor.apply, params=actor_params, tx=optax.adam(config.actor_lr)),
        "actor_target": copy(actor_params),
        "critic": TrainState.create(apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.critic_lr)),
        "critic_target": copy(critic_params),
        "key": key,
    }


def make_update(config: Config):
    """`policy_freq` critic steps and one actor step, for one seed; `batches` has a leading axis policy_freq."""
    noise_std, noise_clip = config.policy_noise * config.max_action, config.noise_clip * config.max_action
    head = heads.make_head(config)

    def critic_step(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic = state["actor"], state["critic"]
        key, k_noise = jax.random.split(state["key"])
        # Target policy smoothing: clipped noise on the target actor's action.
        next_a = actor.apply_fn(state["actor_target"], batch["next_observations"])
        noise = jnp.clip(noise_std * jax.random.normal(k_noise, next_a.shape), -noise_clip, noise_clip)
        next_a = jnp.clip(next_a + noise, -config.max_action, config.max_action)
        next_q = head.value(critic.apply_fn(state["critic_target"], batch["next_observations"], next_a)).min(0)
        target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_q

        def critic_loss(params):
            out = critic.apply_fn(params, batch["observations"], batch["actions"])
            return head.loss(out, target).mean(1).sum(), head.value(out).mean()

        (q_loss, q_mean), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
        return {**state, "critic": critic.apply_gradients(grads=grads), "key": key}, {"critic_loss": q_loss,
                                                                                     "q_mean": q_mean}

    def update(state: dict, batches: dict) -> tuple[dict, dict]:
        state, critic_metrics = jax.lax.scan(critic_step, state, batches)
        actor, critic = state["actor"], state["critic"]
        batch = jax.tree_util.tree_map(lambda x: x[-1], batches)  # the actor learns on the last critic batch
        obs, act = batch["observations"], batch["actions"]

        def actor_loss(params):
            pi = actor.apply_fn(params, obs)
            q = head.value(critic.apply_fn(critic.params, obs, pi)[0])  # Q_1 only, as in TD3
            lmbda = jax.lax.stop_gradient(config.alpha / jnp.abs(q).mean())
            bc = ((pi - act) ** 2).mean()
            return -lmbda * q.mean() + bc, (bc, lmbda)

        (pi_loss, (bc_loss, lmbda)), grads = jax.value_and_grad(actor_loss, has_aux=True)(actor.params)
        actor = actor.apply_gradients(grads=grads)
        state = {
            **state,
            "actor": actor,
            "actor_target": optax.incremental_update(actor.params, state["actor_target"], config.tau),
            "critic_target": optax.incremental_update(critic.params, state["critic_target"], config.tau),
        }
        metrics = {k: v.mean() for k, v in critic_metrics.items()}
        return state, {**metrics, "actor_loss": pi_loss, "bc_loss": bc_loss, "lambda": lmbda}

    return update


def make_train(config: Config):
    """`train_chunk(states, data)`: `config.chunk` gradient steps per seed in one jitted scan, seeds vmapped."""
    return offline.make_train(make_update(config), config, batches_per_update=config.policy_freq)


def make_policy(config: Config, act_dim: int):
    actor, _ = make_networks(config, act_dim)
    return actor.apply


def main(config: Config) -> dict:
    return offline.train(config, "td3_bc", init_state, make_train, make_policy)


if __name__ == "__main__":
    run_cli(main, Config)
