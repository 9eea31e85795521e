"""SAC — Soft Actor-Critic (Haarnoja et al., 2018), online, on Gymnasium MuJoCo.

A tanh-Gaussian actor maximizes E[min_i Q_i(s, a) - alpha log pi(a|s)]; twin critics regress on the
soft Bellman target r + gamma (1 - terminal) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi(s'),
with Polyak-averaged target critics; the temperature alpha is tuned so that the policy's entropy
tracks -|A| (the "automatic entropy" version of the second SAC paper).

How it runs here: one env per seed on the host. Every `update_every` env steps the new transitions
are written to a device-resident replay buffer and the same number of updates run in one jitted
`lax.scan` (one update per env step on average, as in the paper; the host sees the device once per
block). Seeds are a vmapped axis of the whole training state.

With a classification value head (--value-head, rlzoo.heads) the critics are trained with the head's loss and
every Q is the head's value; the support comes from the task's reward range (Config.REWARD_RANGES) and gamma,
or --v-min / --v-max.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from functools import partial
from typing import ClassVar

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from rlzoo import buffers, heads, networks
from rlzoo.checkpoint import save_params
from rlzoo.cli import run_cli
from rlzoo.devices import shard_seeds
from rlzoo.envs import HostVectorEnv, check_env_id
from rlzoo.errors import RlzooError
from rlzoo.evaluation import Evaluator
from rlzoo.options import RunConfig, option
from rlzoo.run import Run


@dataclass
class Config(heads.HeadOptions, RunConfig):
    REWARD_RANGES: ClassVar[dict] = {
        # Per-step rewards seen between a random policy and envs/policies' expert (HalfCheetah -2.7..10.9, Hopper
        # -0.6..4.3, Walker2d -1.3..9.6, Ant -2.7..7.9), widened by about half for better policies and the
        # entropy bonus in SAC's soft values.
        "HalfCheetah-*": (-4.0, 16.0),
        "Hopper-*": (-1.0, 7.0),
        "Walker2d-*": (-2.0, 14.0),
        "Ant-*": (-4.0, 12.0),
    }
    """Reward range per task (a glob over --env ids): a classification value head's default support is
    derived from it and gamma (rlzoo.heads.support_from_rewards); other tasks need --v-min and --v-max."""

    env: str = "HalfCheetah-v5"
    """Gymnasium env id (MuJoCo v5)."""
    total_steps: int = option(1_000_000, ">= 1")
    """Environment steps per seed."""
    checkpoint_every: int = option(50_000, ">= 1")
    """Checkpoint interval (the replay buffer is part of the checkpoint, so not too often)."""
    learning_starts: int = option(5_000, ">= 0")
    """Uniform-random actions and no updates for this many initial steps."""
    update_every: int = option(50, ">= 1")
    """Env steps collected between blocks of as many updates (1 update per env step)."""
    buffer_size: int = option(1_000_000, ">= 1")
    """Replay capacity per seed."""
    batch_size: int = option(256, ">= 1")
    """Minibatch size."""
    gamma: float = option(0.99, "[0, 1]")
    """Discount."""
    tau: float = option(0.005, "(0, 1]")
    """Polyak rate of the target critics."""
    actor_lr: float = option(3e-4, "> 0")
    """Adam learning rate of the actor."""
    critic_lr: float = option(3e-4, "> 0")
    """Adam learning rate of the critics."""
    alpha_lr: float = option(3e-4, "> 0")
    """Adam learning rate of log(alpha)."""
    init_alpha: float = option(1.0, ">= 0")
    """Initial entropy temperature."""
    autotune: bool = True
    """Tune alpha toward the target entropy -|A| (else alpha stays init_alpha)."""
    hidden_dims: tuple[int, ...] = option((256, 256), ">= 1")
    """Hidden layers of actor and critics."""
    num_critics: int = option(2, ">= 1")
    """Critics in the ensemble (the minimum is used)."""
    save_policy_every: int = option(0, ">= 0")
    """If > 0, also write the actor's parameters every this many steps to run_dir/policies (for
    building offline datasets from intermediate policies)."""
    save_replay: bool = False
    """At the end, write every transition of the replay buffer, in the order collected, to
    run_dir/replay.npz (python -m envs.build_dataset builds medium-replay datasets from it)."""


def reward_range(config: Config) -> tuple[float, float] | None:
    """The task's reward range from Config.REWARD_RANGES, if it lists the task."""
    return next((r for pattern, r in Config.REWARD_RANGES.items() if fnmatch(config.env, pattern)), None)


def make_networks(config: Config, act_dim: int):
    actor = networks.TanhGaussianActor(act_dim, tuple(config.hidden_dims))
    critic = networks.Ensemble(networks.Critic, config.num_critics, {"hidden_dims": tuple(config.hidden_dims),
                                                                     "out_dim": heads.num_outputs(config)})
    return actor, critic


def init_state(config: Config, key: jax.Array, obs_dim: int, act_dim: int) -> dict:
    """The whole training state of one seed: networks, optimizers, temperature, replay, RNG."""
    actor, critic = make_networks(config, act_dim)
    k_actor, k_critic, k_rest = jax.random.split(key, 3)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    critic_params = critic.init(k_critic, obs, act)
    example = {"observations": jnp.zeros(obs_dim), "actions": jnp.zeros(act_dim), "rewards": jnp.float32(0),
               "next_observations": jnp.zeros(obs_dim), "dones": jnp.float32(0)}
    return {
        "actor": TrainState.create(apply_fn=actor.apply, params=actor.init(k_actor, obs),
                                   tx=optax.adam(config.actor_lr)),
        "critic": TrainState.create(apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.critic_lr)),
        "target_params": jax.tree_util.tree_map(lambda x: x.copy(), critic_params),
        "log_alpha": TrainState.create(apply_fn=None, params={"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                       tx=optax.adam(config.alpha_lr)),
        "replay": buffers.replay_init(example, config.buffer_size),
        "key": k_rest,
    }


def make_update(config: Config, act_dim: int):
    """One SAC gradient step on a minibatch, for one seed."""
    target_entropy = -float(act_dim)
    head = heads.make_head(config, reward_range(config))

    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic, log_alpha = state["actor"], state["critic"], state["log_alpha"]
        key, k_next, k_pi = jax.random.split(state["key"], 3)
        alpha = jnp.exp(log_alpha.params["log_alpha"])

        # Critic: soft Bellman target from the target critics, min over the ensemble.
        next_a, next_logp = networks.sample_tanh_gaussian(k_next, *actor.apply_fn(actor.params,
                                                                                   batch["next_observations"]))
        next_q = head.value(critic.apply_fn(state["target_params"], batch["next_observations"], next_a)).min(0)
        target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * (next_q - alpha * next_logp)

        def critic_loss(params):
            out = critic.apply_fn(params, batch["observations"], batch["actions"])
            return head.loss(out, jax.lax.stop_gradient(target)).mean(1).sum(), head.value(out).mean()

        (q_loss, q_mean), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
        critic = critic.apply_gradients(grads=grads)

        # Actor: maximize min-Q minus the entropy cost, through the reparameterized sample.
        def actor_loss(params):
            a, logp = networks.sample_tanh_gaussian(k_pi, *actor.apply_fn(params, batch["observations"]))
            q = head.value(critic.apply_fn(critic.params, batch["observations"], a)).min(0)
            return (alpha * logp - q).mean(), logp.mean()

        (pi_loss, logp_mean), grads = jax.value_and_grad(actor_loss, has_aux=True)(actor.params)
        actor = actor.apply_gradients(grads=grads)

        # Temperature: push the policy entropy toward the target.
        def alpha_loss(params):
            return -(jnp.exp(params["log_alpha"]) * jax.lax.stop_gradient(logp_mean + target_entropy))

        a_loss, grads = jax.value_and_grad(alpha_loss)(log_alpha.params)
        if config.autotune:
            log_alpha = log_alpha.apply_gradients(grads=grads)

        target_params = optax.incremental_update(critic.params, state["target_params"], config.tau)
        new_state = {**state, "actor": actor, "critic": critic, "target_params": target_params,
                     "log_alpha": log_alpha, "key": key}
        metrics = {"critic_loss": q_loss, "actor_loss": pi_loss, "alpha_loss": a_loss, "alpha": alpha,
                   "q_mean": q_mean, "entropy": -logp_mean}
        return new_state, metrics

    return update


def make_train(config: Config, act_dim: int):
    """Returns jitted, seed-vmapped functions: `act` (one env step) and `learn` (add + scanned updates)."""
    update = make_update(config, act_dim)

    actor, _ = make_networks(config, act_dim)

    def act(params, key: jax.Array, obs: jax.Array, step: jax.Array) -> jax.Array:
        """Exploration action for one env step; the key is derived from (seed key, step), so resumable."""
        k_uniform, k_pi = jax.random.split(jax.random.fold_in(key, step))
        mean, log_std = actor.apply(params, obs)
        a, _ = networks.sample_tanh_gaussian(k_pi, mean, log_std)
        uniform = jax.random.uniform(k_uniform, a.shape, minval=-1.0, maxval=1.0)
        return jnp.where(step < config.learning_starts, uniform, a)

    def learn(state: dict, transitions: dict, do_update: jax.Array) -> tuple[dict, dict]:
        state = {**state, "replay": buffers.replay_add(state["replay"], transitions)}
        n = jax.tree_util.tree_leaves(transitions)[0].shape[0]

        def one(state, _):
            key, k_sample = jax.random.split(state["key"])
            batch = buffers.replay_sample(state["replay"], k_sample, config.batch_size)
            return update({**state, "key": key}, batch)

        def run(state):
            return jax.lax.scan(one, state, None, length=n)

        def skip(state):
            return state, jax.tree_util.tree_map(lambda x: jnp.zeros((n,), x.dtype),
                                                 jax.eval_shape(lambda s: run(s)[1], state))

        return jax.lax.cond(do_update, run, skip, state)

    return jax.jit(jax.vmap(act, in_axes=(0, 0, 0, None))), jax.jit(jax.vmap(learn, in_axes=(0, 0, None)),
                                                                 donate_argnums=0)


def check_config(config: Config) -> None:
    """Reject bad options before the run directory is created."""
    check_env_id(config.env)
    heads.make_head(config, reward_range(config))  # a classification head off REWARD_RANGES needs --v-min/--v-max
    if config.update_every <= 0 or config.chunk % config.update_every or config.learning_starts % config.update_every:
        raise RlzooError(f"--chunk ({config.chunk}) and --learning-starts ({config.learning_starts}) must be "
                         f"multiples of --update-every ({config.update_every})")
    if config.save_policy_every % config.chunk:
        raise RlzooError(f"--save-policy-every {config.save_policy_every} must be a multiple of --chunk {config.chunk}")
    space = gym.make(config.env).action_space
    if not isinstance(space, gym.spaces.Box):
        raise RlzooError(f"SAC needs a continuous (Box) action space; {config.env} has {space}. Use a MuJoCo "
                         "task such as HalfCheetah-v5, or algorithms/pqn.py for discrete actions (MinAtar, Atari).")
    if config.autotune and config.init_alpha == 0:
        raise RlzooError("--init-alpha 0 needs --no-autotune: the tuned temperature is learned as log(alpha), "
                         "which cannot start at log(0). Give a positive --init-alpha, or add --no-autotune for "
                         "SAC without an entropy bonus.")


def save_replay(path, replay: buffers.Replay, seeds: list[int]) -> None:
    """The replay buffer's valid rows in the order they were added (oldest first), one array per field
    with the seed axis first."""
    replay = jax.device_get(replay)
    size, ptr = int(np.asarray(replay.size).reshape(-1)[0]), int(np.asarray(replay.ptr).reshape(-1)[0])
    capacity = next(iter(replay.data.values())).shape[1]
    order = (np.arange(size) + (ptr if size == capacity else 0)) % capacity
    np.savez(path, seeds=np.asarray(seeds), **{k: np.asarray(v)[:, order] for k, v in replay.data.items()})


def main(config: Config) -> dict:
    run = Run.start(config, "sac", prepare=check_config,
                    complete=lambda c, _: heads.with_support(c, reward_range(c)))
    config = run.config
    envs = HostVectorEnv(config.env, run.seeds)
    if not np.allclose(np.abs(envs.low), np.abs(envs.high)):
        print("[rlzoo] note: asymmetric action bounds; actions are rescaled from [-1, 1]")
    state = jax.vmap(partial(init_state, config, obs_dim=envs.obs_dim, act_dim=envs.act_dim))(run.keys)
    # the envs resume exactly, physics and RNGs; they step exactly these seeds, so the seed axis is not padded
    state, _ = shard_seeds(run.restore(state, host={"envs": envs}), pad=False)
    act, learn = make_train(config, envs.act_dim)
    actor, _ = make_networks(config, envs.act_dim)
    low, high = jnp.asarray(envs.low), jnp.asarray(envs.high)
    policy = lambda params, obs: low + (jnp.tanh(actor.apply(params, obs)[0]) + 1.0) * 0.5 * (high - low)
    evaluator = Evaluator(config.env, policy, run.seeds, config.eval_episodes, evals_done=run.evals_done)
    act_keys = jax.vmap(lambda k: jax.random.fold_in(k, 7))(run.keys)

    def chunk(state):
        """config.chunk env steps from run.step: blocks of update_every steps, each followed by as many updates."""
        step, blocks = run.step, []
        for _ in range(config.chunk // config.update_every):
            rows = []
            for _ in range(config.update_every):
                rows.append(envs.step(np.asarray(act(state["actor"].params, act_keys, envs.obs, step))))
                step += 1
            transitions = {k: np.stack([r[k] for r in rows], axis=1) for k in rows[0]}
            state, metrics = learn(state, transitions, step >= config.learning_starts)
            blocks.append(metrics)
        if config.save_policy_every and step % config.save_policy_every == 0:
            save_params(run.run_dir / "policies" / f"step_{step}.npz", state["actor"].params)
        metrics = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=1), *blocks)
        metrics["episode_return"] = jnp.asarray(np.nan_to_num(envs.last_return))[:, None]
        return state, metrics

    def evaluate(state):
        returns = evaluator(state["actor"].params)
        return returns, returns.mean(1)

    state = run.train(state, chunk, evaluate, "return")
    run.save_policy(state["actor"].params, hidden_dims=list(config.hidden_dims))
    if config.save_replay:
        save_replay(run.run_dir / "replay.npz", state["replay"], run.seeds)
    return run.finish(task=config.env, data_source="online", close=[envs, evaluator])


if __name__ == "__main__":
    run_cli(main, Config)
