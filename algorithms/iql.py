"""IQL — Implicit Q-Learning (Kostrikov, Nair & Levine, 2021), offline.

IQL never queries Q on actions outside the dataset. Three regressions, all on dataset (s, a, r, s'):
  value   V(s)    <- expectile_tau of min_i Q'_i(s, a)    (asymmetric L2: |tau - 1(u < 0)| u^2)
  critic  Q_i(s,a) <- r + gamma (1 - terminal) V(s')       (plain MSE, twin critics)
  actor   max E[exp(beta (min_i Q'_i(s, a) - V(s))) log pi(a|s)], weights clipped at 100
An expectile tau > 0.5 makes V an upper expectile of Q over the data's actions, i.e. the value of the
best in-support actions; the actor is then advantage-weighted regression onto dataset actions.

Defaults are the paper's MuJoCo settings: tau 0.7, beta 3.0, lr 3e-4 with cosine decay of the
actor's, 2x256 MLPs, batch 256, 1M steps, rewards scaled by 1000 / (max - min episode return;
complete episodes only, as CORL).
Observations are normalized with dataset statistics as in CORL (the paper does not; --no-normalize-obs).

Value heads (--value-head, rlzoo.heads): Q and V both use the head. The critics' TD regression becomes the
head's loss against r + gamma V(s'). V's expectile regression becomes the head's loss weighted per sample by
|tau - 1(Q - V < 0)| (V's current value, no gradient): for the squared error that is the expectile loss itself;
for a classification head the weighted cross-entropy's fixed point is the weighted mixture of the targets'
distributions, whose mean v satisfies tau E[(Q - v)+] = (1 - tau) E[(v - Q)+], the definition of the
tau-expectile, so V still learns the upper expectile of Q: exactly with two_hot (each target's distribution has
the target as its mean), up to HL-Gauss's smoothing near the support's ends with hl_gauss, and in both cases of
Q clipped to the support. The support, if not given, comes from the (scaled) rewards and gamma.
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
    expectile: float = option(0.7, "(0, 1)")
    """Expectile of V's regression onto Q (0.7 MuJoCo, 0.9 AntMaze)."""
    beta: float = option(3.0, ">= 0")
    """Inverse temperature of the advantage weights (3.0 MuJoCo, 10.0 AntMaze)."""
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
    scale_rewards: bool = True
    """Scale rewards by 1000 / (max - min return of complete episodes) of the dataset (the paper's MuJoCo setting)."""


def make_networks(config: Config, act_dim: int):
    hidden, out_dim = tuple(config.hidden_dims), heads.num_outputs(config)
    actor = networks.GaussianActor(act_dim, hidden)
    critic = networks.Ensemble(networks.Critic, 2, {"hidden_dims": hidden, "out_dim": out_dim})
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


def expectile_weight(diff: jax.Array, expectile: float) -> jax.Array:
    """|tau - 1(diff < 0)|, with diff = target - prediction."""
    return jnp.where(diff > 0, expectile, 1.0 - expectile)


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """Asymmetric squared loss |tau - 1(diff < 0)| diff^2 (V's loss with the mse head)."""
    return expectile_weight(diff, expectile) * diff**2


def make_update(config: Config):
    """One IQL step (value, then actor, then critics, then targets) on a minibatch, for one seed."""

    head = heads.make_head(config)

    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic, value = state["actor"], state["critic"], state["value"]
        obs, act = batch["observations"], batch["actions"]
        target_q = head.value(critic.apply_fn(state["target_params"], obs, act)).min(0)

        # Value: upper expectile of the target critics' Q over dataset actions (the head's loss, weighted).
        def value_loss(params):
            out = value.apply_fn(params, obs)
            v = head.value(out)
            return (expectile_weight(target_q - v, config.expectile) * head.loss(out, target_q)).mean(), v

        (v_loss, v), grads = jax.value_and_grad(value_loss, has_aux=True)(value.params)
        value = value.apply_gradients(grads=grads)

        # Actor: advantage-weighted regression onto dataset actions.
        weights = jnp.minimum(jnp.exp(config.beta * (target_q - v)), config.max_weight)

        def actor_loss(params):
            mean, log_std = actor.apply_fn(params, obs)
            return -(weights * networks.gaussian_log_prob(mean, log_std, act / config.max_action)).mean()

        pi_loss, grads = jax.value_and_grad(actor_loss)(actor.params)
        actor = actor.apply_gradients(grads=grads)

        # Critics: one-step TD toward r + gamma V(s') with the freshly updated V.
        next_v = head.value(value.apply_fn(value.params, batch["next_observations"]))
        target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_v

        def critic_loss(params):
            out = critic.apply_fn(params, obs, act)
            return head.loss(out, target).mean(1).sum(), head.value(out).mean()

        (q_loss, q_mean), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
        critic = critic.apply_gradients(grads=grads)

        target_params = optax.incremental_update(critic.params, state["target_params"], config.tau)
        new_state = {**state, "actor": actor, "critic": critic, "value": value, "target_params": target_params}
        metrics = {"value_loss": v_loss, "actor_loss": pi_loss, "critic_loss": q_loss, "q_mean": q_mean,
                   "v_mean": v.mean(), "weight_mean": weights.mean()}
        return new_state, metrics

    return update


def make_train(config: Config):
    """`train_chunk(states, data)`: `config.chunk` updates per seed in one jitted scan, seeds vmapped."""
    return offline.make_train(make_update(config), config)


def make_policy(config: Config, act_dim: int):
    """Evaluation acts with the Gaussian's mean, times the action bound."""
    actor, _, _ = make_networks(config, act_dim)
    return lambda params, obs: config.max_action * actor.apply(params, obs)[0]


def main(config: Config) -> dict:
    return offline.train(config, "iql", init_state, make_train, make_policy)


if __name__ == "__main__":
    run_cli(main, Config)
