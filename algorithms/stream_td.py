"""Stream TD(lambda) — streaming value prediction (Elsayed, Vasan & Mahmood, 2024, "Streaming Deep
Reinforcement Learning Finally Works"), on Gymnasium MuJoCo with a fixed policy.

The prediction half of stream AC: a fixed policy acts (by default the committed medium-level SAC actor of the
task, envs/policies/<task>-medium.npz; any actor saved by algorithms/sac.py with --policy), and V learns its
value one transition at a time with ObGD (kappa 2) along the trace of grad(-V(s)) and the TD error
    delta = r + gamma (1 - end) V(s') - V(s),
traces decaying by gamma lambda and restarting after an episode's end (a time-limit truncation counts as one,
with the time input making that predictable), on normalized observations and scaled rewards.

What it reports: how close the prediction is to the truth. For every step t the value V(s_t) predicted
before learning from that step, in reward units (times the reward scale of that moment), is compared with the
Monte Carlo return G_t = sum_k gamma^k r_{t+k} of the rest of the episode; the score is the root mean squared
error over the episodes that ended since the previous report (eval.csv's return_std column holds the standard
deviation of those returns, the error of always predicting their mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlzoo import normalizers as norm
from rlzoo.cli import run_cli
from rlzoo.devices import synchronous_dispatch
from rlzoo.envs import HostVectorEnv, check_env_id
from rlzoo.errors import RlzooError
from rlzoo.networks import MLP, sample_tanh_gaussian, sparse_init
from rlzoo.optim import obgd
from rlzoo.options import RunConfig, option
from rlzoo.policies import load_sac_actor
from rlzoo.run import Run
from rlzoo.stepping import PerStep, observe_host_step, pack_host_step, unpack_host_step


@dataclass
class Config(RunConfig):
    env: str = "Hopper-v5"
    """Gymnasium env id (MuJoCo v5)."""
    policy: str | None = None
    """The fixed policy: an actor saved by algorithms/sac.py (default envs/policies/<task>-medium.npz)."""
    total_steps: int = option(500_000, ">= 1")
    """Env steps per seed."""
    eval_every: int = option(10_000, ">= 1")
    """Report the prediction error of the episodes ended in each span of this many steps."""
    checkpoint_every: int = option(100_000, ">= 1")
    """Checkpoint every this many env steps (a multiple of chunk)."""
    lr: float = option(1.0, "> 0")
    """ObGD step size."""
    gamma: float = option(0.99, "[0, 1)")
    """Discount of the predicted return."""
    lam: float = option(0.8, "[0, 1]")
    """Trace decay lambda."""
    kappa: float = option(2.0, "> 0")
    """ObGD overshooting bound."""
    hidden_dims: tuple[int, ...] = option((128, 128), ">= 1")
    """Hidden layers of V."""
    sparsity: float = option(0.9, "[0, 1)")
    """Fraction of each unit's input weights set to 0 at initialization."""
    normalize_obs: bool = True
    """Normalize observations by their running mean and variance."""
    scale_rewards: bool = True
    """Divide rewards by the running std of the discounted return (errors are reported in reward units)."""
    time_horizon: int = option(1000, ">= 1")
    """The time input is -0.5 + t / time_horizon (the tasks' episode length)."""


def default_policy(env: str) -> Path:
    return Path("envs/policies") / f"{env.split('-')[0].lower()}-medium.npz"


def make_agent(config: Config, obs_dim: int, act_dim: int, policy_path: Path):
    """(init(key, raw_obs), step(state, packed) -> (state, (action, V(s) in reward units))) for one seed."""
    actor, actor_params, _ = load_sac_actor(policy_path, obs_dim, act_dim)
    init_fn = sparse_init(config.sparsity)
    critic = MLP(tuple(config.hidden_dims), 1, kernel_init=init_fn, layer_norm=True, activation=nn.leaky_relu,
                 out_kernel_init=init_fn)
    tx = obgd(config.lr, config.gamma, config.lam, config.kappa)
    value = lambda params, obs: critic.apply(params, obs)[0]
    observe = lambda stats, raw_obs, t: norm.observe(stats, raw_obs, t, config.normalize_obs, config.time_horizon)

    def act(key, raw_obs):
        return sample_tanh_gaussian(key, *actor.apply(actor_params, raw_obs))[0]

    def reward_unit(reward_scale):
        return jnp.sqrt(norm.variance(reward_scale.stats) + 1e-8) if config.scale_rewards else jnp.float32(1.0)

    def init(key: jax.Array, raw_obs: jax.Array) -> dict:
        k_critic, k_act, key = jax.random.split(key, 3)
        stats, obs = observe(norm.mean_var_init((obs_dim,)), raw_obs, jnp.float32(0))
        params = critic.init(k_critic, obs)
        return {"critic": params, "opt": tx.init(params), "obs_stats": stats, "reward_scale": norm.reward_scale_init(),
                "obs": obs, "t": jnp.float32(0), "action": act(k_act, raw_obs), "key": key}

    def step(state: dict, packed: jax.Array):
        host = unpack_host_step(packed, obs_dim)
        ended = host["ended"]
        neg_v, grads = jax.value_and_grad(lambda p: -value(p, state["obs"]))(state["critic"])
        prediction = -neg_v * reward_unit(state["reward_scale"])  # V(s) before this step's update, in reward units
        seen = observe_host_step(state, host, config.gamma, config.normalize_obs, config.scale_rewards,
                                 config.time_horizon)
        delta = seen["reward"] + config.gamma * (1.0 - ended) * value(state["critic"], seen["next_obs"]) + neg_v
        updates, opt = tx.update(grads, state["opt"], delta=delta, reset=ended)
        raw_next = jnp.where(ended, host["reset_obs"], host["next_obs"])
        key, k_act = jax.random.split(state["key"])
        action = act(k_act, raw_next)
        return {**state, "critic": optax.apply_updates(state["critic"], updates), "opt": opt,
                "obs_stats": seen["obs_stats"], "reward_scale": seen["reward_scale"], "obs": seen["obs"],
                "t": seen["t"], "action": action, "key": key}, (action, prediction, jnp.abs(delta), opt.step_size)

    return init, step


class MonteCarloError:
    """Per seed, the predictions and rewards of the running episode; when it ends, each step's squared error
    against the discounted Monte Carlo return of the rest of the episode. Checkpointed with the run."""

    def __init__(self, num_seeds: int, gamma: float):
        self.gamma = gamma
        self.pred: list[list[float]] = [[] for _ in range(num_seeds)]
        self.rew: list[list[float]] = [[] for _ in range(num_seeds)]
        self.sq, self.n = np.zeros(num_seeds), np.zeros(num_seeds)  # since the last report
        self.g_sum, self.g_sq = np.zeros(num_seeds), np.zeros(num_seeds)
        self.last = np.full(num_seeds, np.nan)

    def add(self, prediction: np.ndarray, reward: np.ndarray, ended: np.ndarray) -> None:
        for i in range(len(self.pred)):
            self.pred[i].append(float(prediction[i]))
            self.rew[i].append(float(reward[i]))
            if ended[i]:
                g, returns = 0.0, np.empty(len(self.rew[i]))
                for t in range(len(self.rew[i]) - 1, -1, -1):
                    g = self.rew[i][t] + self.gamma * g
                    returns[t] = g
                self.sq[i] += np.sum((np.asarray(self.pred[i]) - returns) ** 2)
                self.n[i] += len(returns)
                self.g_sum[i] += returns.sum()
                self.g_sq[i] += np.sum(returns**2)
                self.pred[i], self.rew[i] = [], []

    def report(self) -> tuple[np.ndarray, np.ndarray]:
        """(RMSE, std of the Monte Carlo returns), per seed, over the steps of the episodes ended since the last
        report (the previous RMSE and NaN if none ended)."""
        n = np.maximum(self.n, 1)
        rmse = np.where(self.n > 0, np.sqrt(self.sq / n), self.last)
        spread = np.where(self.n > 0, np.sqrt(np.maximum(self.g_sq / n - (self.g_sum / n) ** 2, 0.0)), np.nan)
        self.last = rmse
        self.sq, self.n, self.g_sum, self.g_sq = (np.zeros_like(x) for x in (self.sq, self.n, self.g_sum, self.g_sq))
        return rmse, spread

    def get_state(self) -> dict:
        return {k: getattr(self, k).tolist() if isinstance(getattr(self, k), np.ndarray) else getattr(self, k)
                for k in ("pred", "rew", "sq", "n", "g_sum", "g_sq", "last")}

    def set_state(self, state: dict) -> None:
        self.pred, self.rew = [list(p) for p in state["pred"]], [list(r) for r in state["rew"]]
        for k in ("sq", "n", "g_sum", "g_sq", "last"):
            setattr(self, k, np.asarray(state[k], np.float64))


def check_config(config: Config) -> Path:
    check_env_id(config.env)
    path = Path(config.policy) if config.policy else default_policy(config.env)
    if not path.is_file():
        raise RlzooError(f"stream TD needs a fixed policy to evaluate and found none at {path}. Give --policy with "
                         "an actor saved by algorithms/sac.py (a run's policy.npz), or run from the repository "
                         "root, where envs/policies/<task>-medium.npz are the committed ones.")
    return path


def main(config: Config) -> dict:
    synchronous_dispatch()  # one small jitted call per env step, whose result the host waits for
    run = Run.start(config, "stream_td", prepare=check_config)
    config = run.config
    envs = HostVectorEnv(config.env, run.seeds)
    init, step = make_agent(config, envs.obs_dim, envs.act_dim, run.prepared)
    errors = MonteCarloError(config.num_seeds, config.gamma)
    state = jax.jit(jax.vmap(init))(run.keys, jnp.asarray(envs.obs))
    state = run.restore(state, host={"envs": envs, "errors": errors})
    step = PerStep(step, state)

    def chunk(state):
        action, carry = np.asarray(state["action"]), step.enter(state)
        abs_td, step_size = np.zeros(config.num_seeds), np.zeros(config.num_seeds)
        for _ in range(config.chunk):
            batch = envs.step(action)
            carry, (action, prediction, delta, size) = step(carry, pack_host_step(batch, envs))
            action, prediction = np.asarray(action), np.asarray(prediction)
            errors.add(prediction, batch["rewards"], envs.ended)
            abs_td += np.asarray(delta)
            step_size += np.asarray(size)
        return step.leave(carry), {"abs_td_error": jnp.asarray(abs_td / config.chunk)[:, None],
                       "step_size": jnp.asarray(step_size / config.chunk)[:, None],
                       "episode_return": jnp.asarray(np.nan_to_num(envs.last_return))[:, None]}

    def evaluate(state):
        rmse, spread = errors.report()
        # eval.csv: return_mean = RMSE, return_std = the returns' spread, score = RMSE
        return np.stack([rmse - spread, rmse + spread], axis=1), rmse

    state = run.train(state, chunk, evaluate, "mc_rmse")
    run.save_policy({"critic": state["critic"], "obs_stats": state["obs_stats"]._asdict()},
                    hidden_dims=list(config.hidden_dims))
    return run.finish(task=config.env, data_source="online", close=[envs])


if __name__ == "__main__":
    run_cli(main, Config)
