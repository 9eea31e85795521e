"""Stream AC(lambda) — streaming actor-critic (Elsayed, Vasan & Mahmood, 2024, "Streaming Deep Reinforcement
Learning Finally Works"), online, on Gymnasium MuJoCo.

One transition at a time: no replay buffer, no batches, no target network. After every env step the critic
V and the Gaussian actor pi each take one ObGD step (rlzoo.optim.obgd) along their eligibility traces with
the TD error
    delta = r + gamma (1 - end) V(s') - V(s)        (a time-limit truncation counts as an end, as in the paper)
    critic: trace of grad(-V(s));  actor: trace of grad(-log pi(a|s) - c_H H(pi(.|s)) sign(delta)),
both stepped by -step x delta x trace, where ObGD's step shrinks whenever the update would overshoot
(kappa 2 for the critic, 3 for the actor) and the traces (decay gamma lambda) restart after an episode ends.
What makes this stable is the whole recipe: ObGD, sparse initialization (90% of each unit's input weights
zero), LayerNorm without parameters before every leaky ReLU, observations normalized by their running
mean and variance, rewards divided by the running standard deviation of the discounted return, and the
episode's elapsed time as an extra input (rlzoo.normalizers).

How it runs here: one env per seed on the host (rlzoo.envs.HostVectorEnv); per env step one jitted call,
vmapped over seeds, normalizes the new observation and reward, updates critic and actor, and samples the next
action. Normalizer statistics and traces live in the device state, so checkpoints resume exactly. The score is
the mean undiscounted return of the training episodes that ended since the previous report (the paper's
learning curves); there is no separate evaluation policy. Paper defaults: 2x128 networks, lr 1.0, gamma 0.99,
lambda 0.8, entropy coefficient 0.01, 2M steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlzoo import normalizers as norm
from rlzoo.cli import run_cli
from rlzoo.devices import synchronous_dispatch
from rlzoo.envs import HostVectorEnv, check_env_id
from rlzoo.errors import RlzooError
from rlzoo.evaluation import TrainingReturns
from rlzoo.networks import MLP, sparse_init
from rlzoo.optim import obgd
from rlzoo.options import RunConfig, option
from rlzoo.run import Run
from rlzoo.stepping import PerStep, observe_host_step, pack_host_step, unpack_host_step


@dataclass
class Config(RunConfig):
    env: str = "HalfCheetah-v5"
    """Gymnasium env id with continuous actions (MuJoCo v5)."""
    total_steps: int = option(2_000_000, ">= 1")
    """Env steps per seed (the paper's code: 2M)."""
    eval_every: int = option(10_000, ">= 1")
    """Report the mean return of the training episodes ended in each span of this many steps."""
    checkpoint_every: int = option(100_000, ">= 1")
    """Checkpoint every this many env steps (a multiple of chunk)."""
    lr: float = option(1.0, "> 0")
    """ObGD step size of actor and critic."""
    gamma: float = option(0.99, "[0, 1)")
    """Discount (also of the return whose running std scales the rewards)."""
    lam: float = option(0.8, "[0, 1]")
    """Trace decay lambda."""
    kappa_actor: float = option(3.0, "> 0")
    """ObGD overshooting bound of the actor."""
    kappa_critic: float = option(2.0, "> 0")
    """ObGD overshooting bound of the critic."""
    entropy_coef: float = option(0.01, ">= 0")
    """Entropy bonus, applied as -coef x H x sign(delta) inside the actor's trace."""
    hidden_dims: tuple[int, ...] = option((128, 128), ">= 1")
    """Hidden layers of actor and critic (separate networks)."""
    sparsity: float = option(0.9, "[0, 1)")
    """Fraction of each unit's input weights set to 0 at initialization."""
    normalize_obs: bool = True
    """Normalize observations by their running mean and variance."""
    scale_rewards: bool = True
    """Divide rewards by the running std of the discounted return."""
    time_horizon: int = option(1000, ">= 1")
    """The time input is -0.5 + t / time_horizon (the tasks' episode length)."""


class GaussianPolicy(nn.Module):
    """The paper's actor: MLP trunk (parameter-free LayerNorm, leaky ReLU), mean and softplus(std) heads."""

    act_dim: int
    hidden_dims: tuple[int, ...]
    sparsity: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        init = sparse_init(self.sparsity)
        h = MLP(self.hidden_dims, None, kernel_init=init, layer_norm=True, activation=nn.leaky_relu)(obs)
        return nn.Dense(self.act_dim, kernel_init=init)(h), nn.softplus(nn.Dense(self.act_dim, kernel_init=init)(h))


def make_networks(config: Config, act_dim: int):
    init = sparse_init(config.sparsity)
    actor = GaussianPolicy(act_dim, tuple(config.hidden_dims), config.sparsity)
    critic = MLP(tuple(config.hidden_dims), 1, kernel_init=init, layer_norm=True, activation=nn.leaky_relu,
                 out_kernel_init=init)
    return actor, critic


def normal_log_prob(mean, std, x):
    return jnp.sum(-0.5 * jnp.square((x - mean) / std) - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def normal_entropy(std):
    return jnp.sum(0.5 + 0.5 * jnp.log(2 * jnp.pi) + jnp.log(std), axis=-1)


def make_agent(config: Config, obs_dim: int, act_dim: int):
    """(init(key, raw_obs), step(state, packed)) for one seed; `packed` holds, for the env step just taken,
    [next obs, obs after a reset (= next obs if none), reward, terminated, ended]."""
    actor, critic = make_networks(config, act_dim)
    actor_tx = obgd(config.lr, config.gamma, config.lam, config.kappa_actor)
    critic_tx = obgd(config.lr, config.gamma, config.lam, config.kappa_critic)
    value = lambda params, obs: critic.apply(params, obs)[0]
    observe = lambda stats, raw_obs, t: norm.observe(stats, raw_obs, t, config.normalize_obs, config.time_horizon)

    def sample(params, key, obs):
        mean, std = actor.apply(params, obs)
        return mean + std * jax.random.normal(key, mean.shape)

    def init(key: jax.Array, raw_obs: jax.Array) -> dict:
        k_actor, k_critic, k_act, key = jax.random.split(key, 4)
        stats, obs = observe(norm.mean_var_init((obs_dim,)), raw_obs, jnp.float32(0))
        actor_params, critic_params = actor.init(k_actor, obs), critic.init(k_critic, obs)
        zero = jnp.float32(0.0)
        return {"actor": actor_params, "actor_opt": actor_tx.init(actor_params), "critic": critic_params,
                "critic_opt": critic_tx.init(critic_params), "obs_stats": stats,
                "reward_scale": norm.reward_scale_init(), "obs": obs, "t": jnp.float32(0),
                "action": sample(actor_params, k_act, obs), "key": key,
                "sums": {"abs_td_error": zero, "actor_step": zero, "critic_step": zero, "entropy": zero, "n": zero}}

    def step(state: dict, packed: jax.Array) -> tuple[dict, jax.Array]:
        host = unpack_host_step(packed, obs_dim)
        ended = host["ended"]
        seen = observe_host_step(state, host, config.gamma, config.normalize_obs, config.scale_rewards,
                                 config.time_horizon)
        reward, next_obs = seen["reward"], seen["next_obs"]

        obs, action = state["obs"], state["action"]
        v, critic_grads = jax.value_and_grad(lambda p: -value(p, obs))(state["critic"])
        delta = reward + config.gamma * (1.0 - ended) * value(state["critic"], next_obs) + v  # v = -V(s)

        def actor_objective(params):
            mean, std = actor.apply(params, obs)
            entropy = normal_entropy(std)
            return -normal_log_prob(mean, std, action) - config.entropy_coef * entropy * jnp.sign(delta), entropy

        actor_grads, entropy = jax.grad(actor_objective, has_aux=True)(state["actor"])
        actor_updates, actor_opt = actor_tx.update(actor_grads, state["actor_opt"], delta=delta, reset=ended)
        critic_updates, critic_opt = critic_tx.update(critic_grads, state["critic_opt"], delta=delta, reset=ended)
        actor_params = optax.apply_updates(state["actor"], actor_updates)
        critic_params = optax.apply_updates(state["critic"], critic_updates)

        key, k_act = jax.random.split(state["key"])
        action = sample(actor_params, k_act, seen["obs"])  # after an episode's end, on the reset observation
        sums = state["sums"]
        sums = {"abs_td_error": sums["abs_td_error"] + jnp.abs(delta), "actor_step": sums["actor_step"]
                + actor_opt.step_size, "critic_step": sums["critic_step"] + critic_opt.step_size,
                "entropy": sums["entropy"] + entropy, "n": sums["n"] + 1.0}
        return {**state, "actor": actor_params, "actor_opt": actor_opt, "critic": critic_params,
                "critic_opt": critic_opt, "obs_stats": seen["obs_stats"], "reward_scale": seen["reward_scale"],
                "obs": seen["obs"], "t": seen["t"], "action": action, "key": key, "sums": sums}, action

    return init, step


def take_metrics(state: dict) -> tuple[dict, dict]:
    """The means of the per-step statistics since the last call, and the state with them cleared."""
    sums = state["sums"]
    n = jnp.maximum(sums["n"], 1.0)
    metrics = {k: (v / n)[None] for k, v in sums.items() if k != "n"}
    return {**state, "sums": jax.tree_util.tree_map(jnp.zeros_like, sums)}, metrics


def check_config(config: Config) -> None:
    check_env_id(config.env)
    space = gym.make(config.env).action_space
    if not isinstance(space, gym.spaces.Box):
        raise RlzooError(f"stream AC needs a continuous (Box) action space; {config.env} has {space}. Use a MuJoCo "
                         "task such as HalfCheetah-v5, or algorithms/stream_q.py for discrete actions (MinAtar).")


def main(config: Config) -> dict:
    synchronous_dispatch()  # one small jitted call per env step, whose result the host waits for
    run = Run.start(config, "stream_ac", prepare=check_config)
    config = run.config
    envs = HostVectorEnv(config.env, run.seeds)
    if not np.allclose(envs.low, -1.0) or not np.allclose(envs.high, 1.0):
        print("[rlzoo] note: action bounds are not [-1, 1]; the policy acts in [-1, 1], clipped and rescaled")
    init, step = make_agent(config, envs.obs_dim, envs.act_dim)
    returns = TrainingReturns(config.num_seeds)
    state = jax.jit(jax.vmap(init))(run.keys, jnp.asarray(envs.obs))
    state = run.restore(state, host={"envs": envs, "returns": returns})
    step = PerStep(step, state)
    take = jax.jit(jax.vmap(take_metrics))

    def chunk(state):
        """config.chunk env steps: each one env step on the host and one jitted update-and-act call."""
        action, carry = np.asarray(state["action"]), step.enter(state)
        for _ in range(config.chunk):
            carry, action = step(carry, pack_host_step(envs.step(action), envs))
            action = np.asarray(action)
        state, metrics = take(step.leave(carry))
        finished = envs.pop_finished()
        returns.add([sum(f) for f in finished], [len(f) for f in finished], envs.last_return)
        metrics["episode_return"] = jnp.asarray(np.nan_to_num(envs.last_return))[:, None]
        return state, metrics

    state = run.train(state, chunk, lambda state: returns.report(), "return")
    run.save_policy({"actor": state["actor"], "obs_stats": state["obs_stats"]._asdict()},
                    hidden_dims=list(config.hidden_dims))
    return run.finish(task=config.env, data_source="online", close=[envs])


if __name__ == "__main__":
    run_cli(main, Config)
