"""CQL — Conservative Q-Learning (Kumar, Zhou, Tucker & Levine, 2020), continuous CQL(H), offline.

SAC on the dataset, with a conservative term that pushes Q down on actions the policy or chance
proposes and up on the dataset's actions:
  critics  Q_i(s,a) <- r + gamma (1 - terminal) min_i Q'_i(s', a'),  a' ~ pi(s')   (no entropy in the backup)
           + cql_alpha * E_s[ temp * logsumexp_a(Q_i(s, a) / temp) - Q_i(s, a_data) ]
  actor    min E[alpha log pi(a|s) - min_i Q_i(s, a)],  a ~ pi(s);  alpha tuned toward entropy -|A|
The logsumexp over all actions is estimated with `cql_n_actions` samples each from U(-1, 1), pi(.|s) and
pi(.|s'), importance-weighted by their densities (subtract log density). All 3n + 1 actions of a state are
scored in one batched critic call: [2 critics, batch, 3n + 1]. The Lagrange version (--cql-lagrange) tunes
the weight alpha' so that the gap logsumexp - Q_data tracks --cql-target-action-gap.

Defaults follow the paper as implemented in CORL (MuJoCo): cql_alpha 10, 10 sampled actions, temperature 1,
importance sampling, policy lr 3e-5, Q lr 3e-4, 3x256 MLPs for actor and critics, batch 256, 1M steps,
states normalized with the dataset mean/std, rewards unscaled (Config.TASKS: per-task exceptions).
Differences: the actor's log-std is squashed smoothly into [-5, 2] as in rlzoo's SAC (CORL clips to
[-20, 2] after an offset of -1; they start near e^-1.5 and e^-1); the critics' last layer is orthogonal
with gain 1 (CORL: 1e-2); the --bc-steps warm start maximizes the likelihood of the dataset's actions
(CORL's version evaluates a fresh policy sample instead, so it is not behaviour cloning). All losses are
computed from the parameters before the step, as in CORL.
With a classification value head (--value-head, rlzoo.heads) the TD term is the head's loss on the dataset
action's logits, and the logsumexp and every other Q work on the head's values (the expectation over bins), so
the conservative term pushes the values down, with its gradient through the softmax. That gradient on a logit
is p_i (c_i - Q), which grows with the bins' spacing while the cross-entropy's stays O(1), so the term is
divided by the bin width: measured in bins, cql_alpha keeps its balance against the TD term whatever the
support (values cannot go below v_min, where the push stops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from rlzoo import heads, networks, offline
from rlzoo.cli import run_cli
from rlzoo.options import option


@dataclass
class Config(heads.HeadOptions, offline.OfflineConfig):
    TASKS: ClassVar[dict] = {
        # CORL's tuned configs set normalize_reward on hopper-medium only: rewards times 1000 / (max - min
        # episode return); the same config sets reward_scale 1 and reward_bias 0, so nothing else applies.
        "hopper-medium": {"scale_rewards": True},
    }
    """Per-task defaults (a glob over --env names -> options); flags on the command line override them."""

    cql_alpha: float = option(10.0, ">= 0")
    """Weight of the conservative term (CORL MuJoCo: 10; the paper's JAX ports use 5)."""
    cql_n_actions: int = option(10, ">= 1")
    """Sampled actions per source (uniform, pi(s), pi(s')) in the logsumexp estimate."""
    cql_temp: float = option(1.0, "> 0")
    """Temperature of the logsumexp."""
    cql_importance_sample: bool = True
    """Subtract each sampled action's log density (CQL(H) with importance sampling)."""
    cql_lagrange: bool = False
    """Tune the conservative weight so that the Q gap tracks cql_target_action_gap."""
    cql_target_action_gap: float = option(-1.0, "any")
    """Target of logsumexp Q - Q_data under --cql-lagrange."""
    cql_clip_diff_min: float = option(-np.inf, "any")
    """Lower clip of the per-sample gap logsumexp Q - Q_data."""
    cql_clip_diff_max: float = option(np.inf, "any")
    """Upper clip of the per-sample gap logsumexp Q - Q_data."""
    bc_steps: int = option(0, ">= 0")
    """Initial steps whose actor loss is behaviour cloning (alpha log pi - log pi(a_data)) instead of -Q."""
    backup_entropy: bool = False
    """Subtract alpha log pi(a'|s') in the TD target (off in CQL)."""
    autotune: bool = True
    """Tune the entropy temperature toward -|A| (else alpha = alpha_multiplier)."""
    alpha_multiplier: float = option(1.0, ">= 0")
    """Multiplier of the entropy temperature."""
    gamma: float = option(0.99, "[0, 1]")
    """Discount."""
    tau: float = option(0.005, "(0, 1]")
    """Polyak rate of the target critics."""
    policy_lr: float = option(3e-5, "> 0")
    """Actor (and temperature) learning rate."""
    qf_lr: float = option(3e-4, "> 0")
    """Critic (and Lagrange weight) learning rate."""
    hidden_dims: tuple[int, ...] = option((256, 256, 256), ">= 1")
    """Hidden layers of actor and critics."""


def make_networks(config: Config, act_dim: int):
    hidden = tuple(config.hidden_dims)
    actor = networks.TanhGaussianActor(act_dim, hidden)
    critic = networks.Ensemble(networks.Critic, 2, {"hidden_dims": hidden, "out_dim": heads.num_outputs(config)})
    return actor, critic


def init_state(config: Config, key: jax.Array, obs_dim: int, act_dim: int) -> dict:
    actor, critic = make_networks(config, act_dim)
    k_actor, k_critic, key = jax.random.split(key, 3)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    critic_params = critic.init(k_critic, obs, act)
    scalar = lambda value, lr: TrainState.create(apply_fn=None, params={"log": jnp.float32(value)},
                                                 tx=optax.adam(lr))
    return {
        "actor": TrainState.create(apply_fn=actor.apply, params=actor.init(k_actor, obs),
                                   tx=optax.adam(config.policy_lr)),
        "critic": TrainState.create(apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.qf_lr)),
        "target_params": jax.tree_util.tree_map(lambda x: x.copy(), critic_params),
        "log_alpha": scalar(0.0, config.policy_lr),
        "log_alpha_prime": scalar(1.0, config.qf_lr),
        "step": jnp.int32(0),
        "key": key,
    }


def conservative_gap(q_all: jax.Array, log_density: jax.Array, config: Config) -> jax.Array:
    """Per-critic mean over the batch of temp * logsumexp(Q / temp) - Q(s, a_data).

    `q_all` is [critics, batch, 1 + 3n] with the dataset action first; `log_density` [batch, 3n] is the log
    density of each sampled action, subtracted when importance sampling (then the data's Q is left out of
    the logsumexp, as in CORL); without importance sampling all 1 + 3n values enter it unweighted."""
    q_data = q_all[..., 0]
    if config.cql_importance_sample:
        logits = q_all[..., 1:] - jax.lax.stop_gradient(log_density)
    else:
        logits = q_all
    ood = config.cql_temp * jax.nn.logsumexp(logits / config.cql_temp, axis=-1)
    return jnp.clip(ood - q_data, config.cql_clip_diff_min, config.cql_clip_diff_max).mean(-1)


def make_update(config: Config):
    """One CQL step (actor, temperature, critics, Lagrange weight, targets) on a minibatch, for one seed."""
    n, max_action = config.cql_n_actions, config.max_action
    head = heads.make_head(config)
    cql_scale = 1.0 if head.kind == "mse" else 1.0 / head.bin_width  # the gap in bins for a classification head

    def sample(key, mean, log_std):
        """a = max_action * tanh(u), u ~ N(mean, std), and its log density."""
        a, logp = networks.sample_tanh_gaussian(key, mean, log_std)
        return max_action * a, logp - mean.shape[-1] * jnp.log(max_action)

    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic = state["actor"], state["critic"]
        obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
        batch_size, act_dim = act.shape
        key, k_pi, k_next, k_rand, k_cur, k_nxt = jax.random.split(state["key"], 6)
        log_alpha = state["log_alpha"].params["log"]
        alpha = config.alpha_multiplier * (jnp.exp(log_alpha) if config.autotune else 1.0)

        # Actor: SAC's objective (behaviour cloning for the first bc_steps steps).
        def actor_loss(params):
            mean, log_std = actor.apply_fn(params, obs)
            a, logp = sample(k_pi, mean, log_std)
            q = head.value(critic.apply_fn(critic.params, obs, a)).min(0)
            bc = networks.tanh_gaussian_log_prob(mean, log_std, act / max_action)
            gain = jnp.where(state["step"] < config.bc_steps, bc, q)
            return (alpha * logp - gain).mean(), logp

        (pi_loss, logp), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(actor.params)
        # Temperature: toward entropy -|A|.
        alpha_loss, alpha_grad = jax.value_and_grad(
            lambda p: -(p["log"] * jax.lax.stop_gradient(logp - act_dim)).mean())(state["log_alpha"].params)

        # Policy samples for the TD target and the conservative term, from one actor call on s and s'.
        mean, log_std = actor.apply_fn(actor.params, jnp.concatenate([obs, next_obs]))
        (mean_s, mean_n), (std_s, std_n) = jnp.split(mean, 2), jnp.split(log_std, 2)
        next_a, next_logp = sample(k_next, mean_n, std_n)
        next_q = head.value(critic.apply_fn(state["target_params"], next_obs, next_a)).min(0)
        if config.backup_entropy:
            next_q = next_q - alpha * next_logp
        target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_q

        rep = lambda x: jnp.broadcast_to(x[:, None], (batch_size, n, x.shape[-1]))
        rand_a = jax.random.uniform(k_rand, (batch_size, n, act_dim), minval=-max_action, maxval=max_action)
        cur_a, cur_logp = sample(k_cur, rep(mean_s), rep(std_s))
        nxt_a, nxt_logp = sample(k_nxt, rep(mean_n), rep(std_n))
        # Every action scored for state s: [data, n uniform, n from pi(s'), n from pi(s)].
        actions = jnp.concatenate([act[:, None], rand_a, nxt_a, cur_a], axis=1)
        obs_rep = jnp.broadcast_to(obs[:, None], (batch_size, 3 * n + 1, obs.shape[-1]))
        log_density = jnp.concatenate([jnp.full((batch_size, n), -act_dim * jnp.log(2.0 * max_action)),
                                       nxt_logp, cur_logp], axis=1)
        alpha_prime = jnp.clip(jnp.exp(state["log_alpha_prime"].params["log"]), 0.0, 1e6)

        def critic_loss(params):
            out = critic.apply_fn(params, obs_rep, actions)  # [2, batch, 3n + 1 (, bins)], one batched call
            q_all = head.value(out)  # [2, batch, 3n + 1]
            q_data = q_all[..., 0]
            td_loss = head.loss(out[:, :, 0], target).mean(1).sum()
            gap = conservative_gap(q_all, log_density, config)  # [2]
            if config.cql_lagrange:
                cql_loss = alpha_prime * config.cql_alpha * (gap - config.cql_target_action_gap)
            else:
                cql_loss = config.cql_alpha * gap
            return td_loss + cql_scale * cql_loss.sum(), (td_loss, gap, q_data.mean())

        (q_loss, (td_loss, gap, q_mean)), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
            critic.params)
        # Lagrange weight: raise alpha' while the gap exceeds its target, lower it otherwise.
        alpha_prime_loss, alpha_prime_grad = jax.value_and_grad(
            lambda p: -0.5 * (jnp.clip(jnp.exp(p["log"]), 0.0, 1e6) * config.cql_alpha
                                * (jax.lax.stop_gradient(gap) - config.cql_target_action_gap)).sum())(
            state["log_alpha_prime"].params)

        critic = critic.apply_gradients(grads=critic_grads)
        new_state = {
            **state,
            "actor": actor.apply_gradients(grads=actor_grads),
            "critic": critic,
            "target_params": optax.incremental_update(critic.params, state["target_params"], config.tau),
            "step": state["step"] + 1,
            "key": key,
        }
        if config.autotune:
            new_state["log_alpha"] = state["log_alpha"].apply_gradients(grads=alpha_grad)
        if config.cql_lagrange:
            new_state["log_alpha_prime"] = state["log_alpha_prime"].apply_gradients(grads=alpha_prime_grad)
        metrics = {"critic_loss": q_loss, "td_loss": td_loss, "cql_gap": gap.mean(), "q_mean": q_mean,
                   "actor_loss": pi_loss, "alpha": alpha, "alpha_loss": alpha_loss, "entropy": -logp.mean()}
        if config.cql_lagrange:
            metrics.update(alpha_prime=alpha_prime, alpha_prime_loss=alpha_prime_loss)
        return new_state, metrics

    return update


def make_train(config: Config):
    """`train_chunk(states, data)`: `config.chunk` updates per seed in one jitted scan, seeds vmapped."""
    return offline.make_train(make_update(config), config)


def make_policy(config: Config, act_dim: int):
    """Evaluation acts with max_action * tanh(mean)."""
    actor, _ = make_networks(config, act_dim)
    return lambda params, obs: config.max_action * jnp.tanh(actor.apply(params, obs)[0])


def main(config: Config) -> dict:
    return offline.train(config, "cql", init_state, make_train, make_policy)


if __name__ == "__main__":
    run_cli(main, Config)
