"""PQN — Parallelised Q-Network (Gallici et al., 2024, "Simplifying Deep Temporal Difference Learning"), MinAtar.

Q-learning with neither a replay buffer nor a target network. Many environments are stepped in parallel
with an epsilon-greedy policy (epsilon decays linearly); every rollout of T steps x N envs is turned
into Q(lambda) targets by one reverse scan over time,

    G_{T-1} = r_{T-1} + gamma (1 - d_{T-1}) max_a Q(s_T, a)
    G_t     = r_t + gamma (1 - d_t) [ (1 - lambda) max_a Q(s_{t+1}, a) + lambda G_{t+1} ],

(d_t = 1 ends the episode: its target is r_t), with the max-Q values recorded while acting. The
rollout is then used for several epochs of minibatch regressions, loss = 0.5 (Q(s_t, a_t) - G_t)^2,
with RAdam, global-norm clipping and a linearly decayed learning rate. What keeps this stable without
a target network is LayerNorm after every hidden layer of the Q-network.

This file runs MinAtar through gymnax: env, rollout, lambda-returns and updates of a whole chunk run in
one `jax.jit(jax.vmap(train_chunk))` over seeds; the host sees the device once per chunk.
(`pqn_atari.py` is the same algorithm on Atari through ale-py.) Defaults are the paper's MinAtar table:
128 envs x 32 steps, lr 5e-4 decayed to 0, lambda 0.65, 2 epochs x 32 minibatches, epsilon 1 -> 0.05
over the first 10%. Differences from the reference code (purejaxql): observations (0/1 planes) are not
divided by 255 (--minatar-obs-div-255 does); env steps are rounded to whole chunks (9,994,240, not 1e7).
With a classification value head (--value-head, rlzoo.heads) the network gives logits over bins per action,
the regression onto the lambda-returns is the head's loss, and every Q (acting, the max in the targets,
evaluation) is the head's value; the default support [0, 1 / (1 - gamma)] holds every return of MinAtar's
0/1 rewards.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from rlzoo import heads
from rlzoo.cli import run_cli
from rlzoo.devices import shard_seeds
from rlzoo.errors import RlzooError, close_matches
from rlzoo.networks import QNetwork
from rlzoo.options import RunConfig, option
from rlzoo.qlearning import act_eps_greedy, q_lambda_returns
from rlzoo.run import Run

MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")
REWARD_RANGE = (0.0, 1.0)  # MinAtar's rewards are 0 or 1 per step: a classification head's default support


@dataclass
class Config(heads.HeadOptions, RunConfig):
    env: str = "Breakout-MinAtar"
    """Asterix-MinAtar, Breakout-MinAtar, Freeway-MinAtar or SpaceInvaders-MinAtar (gymnax)."""
    total_steps: int = option(9_994_240, ">= 1")
    """Env steps per seed (per env batch: num_envs steps per vector step); 1e7 rounded down to whole chunks."""
    chunk: int = option(81_920, ">= 1")
    """Env steps per compiled chunk (a multiple of num_envs x num_steps: 20 rollouts by default)."""
    eval_every: int = option(491_520, ">= 1")
    """Greedy evaluation every this many env steps (a multiple of chunk)."""
    checkpoint_every: int = option(491_520, ">= 1")
    """Checkpoint every this many env steps (a multiple of chunk)."""
    eval_episodes: int = option(128, ">= 1")
    """Greedy evaluation episodes per seed, run as parallel envs (the paper: 128 on MinAtar)."""
    num_envs: int = option(128, ">= 1")
    """Parallel environments per seed."""
    num_steps: int = option(32, ">= 1")
    """Steps per environment in each rollout."""
    num_epochs: int = option(2, ">= 1")
    """Passes over each rollout."""
    num_minibatches: int = option(32, ">= 1")
    """Minibatches per pass (minibatch size = num_envs x num_steps / num_minibatches)."""
    lr: float = option(5e-4, "> 0")
    """RAdam learning rate."""
    lr_linear_decay: bool = True
    """Decay the learning rate linearly to 0 over decay_steps."""
    max_grad_norm: float = option(10.0, "> 0")
    """Global gradient-norm clip."""
    gamma: float = option(0.99, "[0, 1]")
    """Discount."""
    lam: float = option(0.65, "[0, 1]")
    """lambda of the Q(lambda) targets."""
    eps_start: float = option(1.0, "[0, 1]")
    """Initial exploration epsilon."""
    eps_finish: float = option(0.05, "[0, 1]")
    """Final exploration epsilon."""
    eps_decay: float = option(0.1, "[0, 1]")
    """Fraction of decay_steps over which epsilon decays linearly."""
    decay_steps: int = option(0, ">= 0")
    """Env steps the learning-rate and epsilon schedules span (0: total_steps)."""
    minatar_obs_div_255: bool = False
    """Divide the 0/1 observation planes by 255 as the reference code does (for comparing with it)."""


def make_head(config: Config) -> heads.ValueHead:
    """The value head; an unset support spans every return of MinAtar's rewards: [0, 1 / (1 - gamma)]."""
    return heads.make_head(config, REWARD_RANGE)


def make_network(num_actions: int, obs_div_255: bool = False, num_bins: int = 1) -> QNetwork:
    """Conv 16 3x3 + LN + ReLU, Dense 128 + LN + ReLU, Dense |A| (the reference's MinAtar network; |A| x bins
    outputs with a classification head)."""
    return QNetwork(num_actions, convs=((16, 3, 1),), hidden=(128,), scale=1 / 255 if obs_div_255 else 1.0,
                    num_bins=num_bins)


def schedules(config: Config):
    """(epsilon as a function of the rollout count, learning rate as a function of the gradient-step count)."""
    rollouts = (config.decay_steps or config.total_steps) // (config.num_envs * config.num_steps)
    eps = optax.linear_schedule(config.eps_start, config.eps_finish, max(int(config.eps_decay * rollouts), 1))
    grad_steps = rollouts * config.num_epochs * config.num_minibatches
    lr = optax.linear_schedule(config.lr, 0.0, grad_steps) if config.lr_linear_decay else optax.constant_schedule(
        config.lr)
    return eps, lr


def init_state(config: Config, network: QNetwork, key: jax.Array, obs_shape: tuple[int, ...]) -> dict:
    """Learner state of one seed: network + optimizer, RNG, rollouts done."""
    k_net, key = jax.random.split(key)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.radam(schedules(config)[1]))
    params = network.init(k_net, jnp.zeros((1, *obs_shape)))
    return {"train": TrainState.create(apply_fn=network.apply, params=params, tx=tx), "key": key,
            "rollouts": jnp.int32(0)}


def make_learn(config: Config, network: QNetwork):
    """learn(state, rollout, last_obs) for one seed: lambda-returns, then epochs x minibatches of updates.

    `rollout` is time-major [T, N, ...] with obs, action, reward, done, valid (False for a transition that
    does not count, e.g. one an emulator spends resetting) and q_max = max_a Q(obs, a) recorded while acting."""
    eps_schedule, lr_schedule = schedules(config)
    head = make_head(config)

    def loss_fn(params, batch):
        out = network.apply(params, batch["obs"])  # [B, A] (mse) or [B, A, bins]
        action = batch["action"].reshape(-1, *([1] * (out.ndim - 1)))
        out_taken = jnp.take_along_axis(out, action, axis=1)[:, 0]
        weight = batch["valid"].astype(jnp.float32)
        # 0.5 x the head's loss: the paper's 0.5 (Q - G)^2 with mse; a constant factor, also on the cross-entropy
        loss = 0.5 * jnp.sum(weight * head.loss(out_taken, batch["target"])) / jnp.maximum(weight.sum(), 1.0)
        return loss, head.value(out_taken).mean()

    def minibatch_step(train, batch):
        (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(train.params, batch)
        return train.apply_gradients(grads=grads), (loss, q_mean)

    def learn(state: dict, rollout: dict, last_obs: jax.Array) -> tuple[dict, dict]:
        train = state["train"]
        key, k_epochs = jax.random.split(state["key"])
        last_q = head.value(network.apply(train.params, last_obs)).max(-1)
        next_q = jnp.concatenate([rollout["q_max"][1:], last_q[None]])
        targets = q_lambda_returns(rollout["reward"], rollout["done"].astype(jnp.float32), next_q, config.gamma,
                                   config.lam)
        data = {"obs": rollout["obs"], "action": rollout["action"], "valid": rollout["valid"], "target": targets}
        data = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), data)  # [T * N, ...]
        size = data["action"].shape[0]

        def epoch(train, k):
            perm = jax.random.permutation(k, size).reshape(config.num_minibatches, -1)
            return jax.lax.scan(minibatch_step, train, jax.tree_util.tree_map(lambda x: x[perm], data))

        train, (loss, q_mean) = jax.lax.scan(epoch, train, jax.random.split(k_epochs, config.num_epochs))
        metrics = {"loss": loss.mean(), "q_mean": q_mean.mean(), "epsilon": eps_schedule(state["rollouts"]),
                   "lr": lr_schedule(train.step)}
        return {**state, "train": train, "key": key, "rollouts": state["rollouts"] + 1}, metrics

    return learn


def make_minatar(config: Config):
    """(network, init(key), train_chunk(state), evaluate(params, key)) for one seed; the envs live in the state."""
    import gymnax

    # gymnax's MinAtar writes ints into bool planes; jax 0.10 warns about it on every trace.
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)
    env, env_params = gymnax.make(config.env)
    head = make_head(config)
    network = make_network(env.num_actions, config.minatar_obs_div_255, head.out_dim)
    q_values = lambda params, obs: head.value(network.apply(params, obs))
    obs_shape = tuple(env.observation_space(env_params).shape)
    learn = make_learn(config, network)
    eps_schedule, _ = schedules(config)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def init(key: jax.Array) -> dict:
        k_learner, k_env = jax.random.split(key)
        state = init_state(config, network, k_learner, obs_shape)
        obs, env_state = reset(jax.random.split(k_env, config.num_envs), env_params)
        zeros = jnp.zeros(config.num_envs, jnp.float32)
        return {**state, "env": {"state": env_state, "obs": obs, "ep_return": zeros, "last_return": zeros}}

    def env_step(carry, key):
        params, eps, envs = carry
        k_act, k_env = jax.random.split(key)
        action, q_max = act_eps_greedy(q_values, params, k_act, envs["obs"], eps)
        obs, env_state, reward, done, _ = step(jax.random.split(k_env, config.num_envs), envs["state"], action,
                                               env_params)
        reward = reward.astype(jnp.float32)
        ep_return = envs["ep_return"] + reward
        transition = {"obs": envs["obs"], "action": action, "reward": reward, "done": done,
                      "valid": jnp.ones_like(done), "q_max": q_max}
        envs = {"state": env_state, "obs": obs, "ep_return": jnp.where(done, 0.0, ep_return),
                "last_return": jnp.where(done, ep_return, envs["last_return"])}
        return (params, eps, envs), transition

    def rollout_and_learn(state: dict, _):
        key, k_rollout = jax.random.split(state["key"])
        carry = (state["train"].params, eps_schedule(state["rollouts"]), state["env"])
        (_, _, envs), rollout = jax.lax.scan(env_step, carry, jax.random.split(k_rollout, config.num_steps))
        state, metrics = learn({**state, "key": key, "env": envs}, rollout, envs["obs"])
        return state, {**metrics, "episode_return": envs["last_return"].mean()}

    def train_chunk(state: dict):
        rollouts = config.chunk // (config.num_envs * config.num_steps)
        return jax.lax.scan(rollout_and_learn, state, None, length=rollouts)

    def evaluate(params, key: jax.Array) -> jax.Array:
        """Undiscounted return of the first greedy episode in each of eval_episodes envs."""
        k_reset, k_run = jax.random.split(key)
        obs, env_state = reset(jax.random.split(k_reset, config.eval_episodes), env_params)

        def cond(carry):
            return carry[3].any() & (carry[5] < env_params.max_steps_in_episode)

        def body(carry):
            obs, env_state, returns, running, key, t = carry
            key, k_step = jax.random.split(key)
            action = jnp.argmax(q_values(params, obs), axis=-1)
            obs, env_state, reward, done, _ = step(jax.random.split(k_step, config.eval_episodes), env_state,
                                                   action, env_params)
            return obs, env_state, returns + reward * running, running & ~done, key, t + 1

        carry = (obs, env_state, jnp.zeros(config.eval_episodes), jnp.ones(config.eval_episodes, bool), k_run, 0)
        return jax.lax.while_loop(cond, body, carry)[2]

    return network, init, train_chunk, evaluate


def check_config(config: Config) -> None:
    make_head(config)
    if config.env not in MINATAR:
        matches = close_matches(config.env, MINATAR)
        atari = " For an Atari game use algorithms/pqn_atari.py." if "MinAtar" not in config.env else ""
        raise RlzooError(f"unknown environment '{config.env}' for PQN on MinAtar. "
                         + (f"Close matches: {', '.join(matches)}. " if matches else "")
                         + f"It takes one of {', '.join(MINATAR)} (gymnax).{atari}")
    rollout = config.num_envs * config.num_steps
    if config.chunk % rollout:
        raise RlzooError(f"--chunk {config.chunk} must be a multiple of --num-envs x --num-steps "
                         f"({config.num_envs} x {config.num_steps} = {rollout}), the env steps of one rollout")
    if rollout % config.num_minibatches:
        raise RlzooError(f"--num-minibatches {config.num_minibatches} must divide num_envs x num_steps ({rollout})")


def main(config: Config) -> dict:
    run = Run.start(config, "pqn", prepare=check_config, complete=lambda c, _: heads.with_support(c, REWARD_RANGE))
    config = run.config
    network, init, train_chunk, evaluate_one = make_minatar(config)
    state = run.restore(jax.jit(jax.vmap(init))(run.keys))  # the envs are in the device state: continues exactly
    state, _ = shard_seeds(state)
    chunk = jax.jit(jax.vmap(train_chunk), donate_argnums=0)
    eval_jit = jax.jit(jax.vmap(evaluate_one, in_axes=(0, 0)))
    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(run.keys)

    def evaluate(state):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, run.step)
        returns = np.asarray(eval_jit(state["train"].params, keys))
        return returns, returns.mean(1)

    state = run.train(state, chunk, evaluate, "return")
    run.save_policy(state["train"].params, backend="minatar")
    return run.finish(task=config.env, data_source="online")


if __name__ == "__main__":
    run_cli(main, Config)
