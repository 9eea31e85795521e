"""IQL — Implicit Q-Learning (Kostrikov, Nair & Levine, 2021), offline.

IQL never queries Q on actions outside the dataset. Three regressions, all on dataset (s, a, r, s'):
  value   V(s)    <- expectile_tau of min_i Q'_i(s, a)    (asymmetric L2: |tau - 1(u < 0)| u^2)
  critic  Q_i(s,a) <- r + gamma (1 - terminal) V(s')       (plain MSE, twin critics)
  actor   max E[exp(beta (min_i Q'_i(s, a) - V(s))) log pi(a|s)], weights clipped at 100
An expectile tau > 0.5 makes V an upper expectile of Q over the data's actions, i.e. the value of the
best in-support actions; the actor is then advantage-weighted regression onto dataset actions.

Defaults are the paper's MuJoCo settings: tau 0.7, beta 3.0, lr 3e-4 with cosine decay of the
actor's, 2x256 MLPs, batch 256, 1M steps, rewards scaled by 1000 / (max - min episode return).
Observations are normalized with dataset statistics as in CORL (the paper does not; --no-normalize-obs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from rlzoo import buffers, datasets, networks
from rlzoo.errors import run_cli
from rlzoo.evaluation import Evaluator
from rlzoo.logging import RunLogger
from rlzoo.run import RunConfig, finish, seed_keys, shard_seeds, start_run, train_loop


@dataclass
class Config(RunConfig):
    env: str = "halfcheetah-medium"
    """Dataset: a D4RL-style name (halfcheetah-medium, hopper-medium-replay, ...), a Minari id or a path."""
    total_steps: int = 1_000_000
    """Gradient steps per seed (paper: 1M)."""
    batch_size: int = 256
    """Minibatch size."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    expectile: float = 0.7
    """Expectile of V's regression onto Q (0.7 MuJoCo, 0.9 AntMaze)."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights (3.0 MuJoCo, 10.0 AntMaze)."""
    max_weight: float = 100.0
    """Clip of the exponentiated advantage weights."""
    actor_lr: float = 3e-4
    """Actor learning rate (cosine-decayed to 0 over total_steps)."""
    critic_lr: float = 3e-4
    """Q learning rate."""
    value_lr: float = 3e-4
    """V learning rate."""
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layers of actor, critics and value."""
    normalize_obs: bool = True
    """Normalize observations with the dataset mean/std (CORL; the paper does not)."""
    scale_rewards: bool = True
    """Scale rewards by 1000 / (max - min episode return) (the paper's MuJoCo setting)."""
    download: bool = True
    """Try to download the official Minari dataset when it is not on disk (fails fast offline)."""


def make_networks(config: Config, act_dim: int):
    hidden = tuple(config.hidden_dims)
    actor = networks.GaussianActor(act_dim, hidden)
    critic = networks.Ensemble(networks.Critic, 2, {"hidden_dims": hidden})
    value = networks.ValueCritic(hidden)
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


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """Asymmetric squared loss |tau - 1(diff < 0)| diff^2, with diff = target - prediction."""
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff**2


def make_update(config: Config):
    """One IQL step (value, then actor, then critics, then targets) on a minibatch, for one seed."""

    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic, value = state["actor"], state["critic"], state["value"]
        obs, act = batch["observations"], batch["actions"]
        target_q = critic.apply_fn(state["target_params"], obs, act).min(0)

        # Value: upper expectile of the target critics' Q over dataset actions.
        def value_loss(params):
            v = value.apply_fn(params, obs)
            return expectile_loss(target_q - v, config.expectile).mean(), v

        (v_loss, v), grads = jax.value_and_grad(value_loss, has_aux=True)(value.params)
        value = value.apply_gradients(grads=grads)

        # Actor: advantage-weighted regression onto dataset actions.
        weights = jnp.minimum(jnp.exp(config.beta * (target_q - v)), config.max_weight)

        def actor_loss(params):
            mean, log_std = actor.apply_fn(params, obs)
            return -(weights * networks.gaussian_log_prob(mean, log_std, act)).mean()

        pi_loss, grads = jax.value_and_grad(actor_loss)(actor.params)
        actor = actor.apply_gradients(grads=grads)

        # Critics: one-step TD toward r + gamma V(s') with the freshly updated V.
        next_v = value.apply_fn(value.params, batch["next_observations"])
        target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_v

        def critic_loss(params):
            q = critic.apply_fn(params, obs, act)
            return ((q - target) ** 2).mean(1).sum(), q.mean()

        (q_loss, q_mean), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
        critic = critic.apply_gradients(grads=grads)

        target_params = optax.incremental_update(critic.params, state["target_params"], config.tau)
        new_state = {**state, "actor": actor, "critic": critic, "value": value, "target_params": target_params}
        metrics = {"value_loss": v_loss, "actor_loss": pi_loss, "critic_loss": q_loss, "q_mean": q_mean,
                   "v_mean": v.mean(), "weight_mean": weights.mean()}
        return new_state, metrics

    return update


def make_train(config: Config):
    """`train_chunk(states, data)`: `config.chunk` updates per seed in one scan, seeds vmapped, jitted."""
    update = make_update(config)

    def train_chunk(state: dict, data: dict) -> tuple[dict, dict]:
        def one(state, _):
            key, k_batch = jax.random.split(state["key"])
            batch = buffers.dataset_sample(data, k_batch, config.batch_size)
            return update({**state, "key": key}, batch)

        return jax.lax.scan(one, state, None, length=config.chunk)

    return jax.jit(jax.vmap(train_chunk, in_axes=(0, None)), donate_argnums=0)


def load_dataset(config: Config) -> datasets.OfflineDataset:
    """Load the dataset before the run directory exists, so that a bad name leaves nothing behind."""
    dataset = datasets.load(config.env, download=config.download)
    dataset.normalized_score(0.0)  # fails now, not at the first evaluation, if reference scores are missing
    return dataset


def main(config: Config) -> dict:
    run = start_run(config, "iql", prepare=load_dataset)
    config, dataset = run.config, run.prepared
    datasets.pin_to_run(dataset, run.run_dir, run.resuming)
    print(f"[rlzoo] {dataset.name}: {len(dataset):,} transitions, {len(dataset.episode_returns)} episodes, "
          f"source {dataset.source} ({', '.join(dataset.dataset_ids)}), evaluated on {dataset.env_id}")
    obs_mean, obs_std = dataset.observation_stats() if config.normalize_obs else (0.0, 1.0)
    reward_scale = dataset.reward_scale() if config.scale_rewards else 1.0
    data = jax.device_put(dataset.transitions(obs_mean, obs_std, reward_scale))
    obs_dim, act_dim = dataset.observations.shape[1], dataset.actions.shape[1]

    state = jax.vmap(partial(init_state, config, obs_dim=obs_dim, act_dim=act_dim))(seed_keys(run.seeds))
    start_step = 0
    if run.resuming:
        state, meta = run.checkpointer.restore(state)
        start_step = meta["step"]
        print(f"[rlzoo] resumed at step {start_step}")
    state, data = shard_seeds(state, data)

    actor, _, _ = make_networks(config, act_dim)
    mean_j, std_j = jnp.asarray(obs_mean, jnp.float32), jnp.asarray(obs_std, jnp.float32)
    policy = lambda params, obs: actor.apply(params, (obs - mean_j) / std_j)[0]
    evaluator = Evaluator(dataset.env_id, policy, run.seeds, config.eval_episodes,
                          evals_done=start_step // config.eval_every)
    logger = RunLogger(run.run_dir, f"iql-{config.env}", config.num_seeds, run.seeds, config.total_steps,
                       start_step, "normalized score", config={**vars(config), **dataset.summary},
                       use_wandb=config.wandb, wandb_project=config.wandb_project, wandb_mode=config.wandb_mode,
                       quiet=config.quiet)
    train_chunk = make_train(config)

    def evaluate(state):
        returns = evaluator(state["actor"].params)
        return returns, dataset.normalized_score(returns).mean(1)

    t0 = time.perf_counter()
    train_loop(run, state, lambda s: train_chunk(s, data), evaluate, logger, start_step)
    evaluator.close()
    return finish(run, logger, "normalized score", config.env, dataset.source, time.perf_counter() - t0)


if __name__ == "__main__":
    run_cli(main, Config)
