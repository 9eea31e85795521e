"""Stream Q(lambda) — streaming Q-learning (Elsayed, Vasan & Mahmood, 2024, "Streaming Deep Reinforcement
Learning Finally Works"), online, on MinAtar through gymnax.

One transition at a time, no replay buffer, no target network. After every env step the Q-network takes one
ObGD step (rlzoo.optim.obgd, kappa 2) along the eligibility trace of grad(-Q(s, a)) with the TD error
    delta = r + gamma (1 - end) max_a' Q(s', a') - Q(s, a),
and the trace restarts after an episode ends or after an exploratory action that differs from the greedy one
(Watkins's Q(lambda)). Acting is epsilon-greedy, epsilon decaying linearly from 1 to 0.01 over the first 20%
of the steps. Stability comes from ObGD, sparse initialization, parameter-free LayerNorm (over a conv layer's
whole output) before every leaky ReLU, and observations and rewards normalized on the fly
(rlzoo.normalizers; no time input here, as in the paper's MinAtar agent).

How it runs here: env, acting, normalizers and updates of a chunk run in one jitted `lax.scan`, vmapped over
seeds (one env per seed, as the method intends); the host sees the device once per chunk. The score is the
mean undiscounted return of the training episodes that ended since the previous report. Differences from the
paper's code: gymnax's MinAtar (no sticky actions, 1,000-step episode limit, treated as an end).

Atari (ALE/<Game>-v5) runs through ale-py on the host (rlzoo.atari: frame skip 4, 84x84 grayscale, 4 stacked
frames, no sticky actions as in the paper's NoFrameskip games, a lost life ends the learning episode, rewards
not clipped but scaled), one env per seed and one jitted update-and-act call per step; the network is the
paper's: convolutions 32 8x8/5, 64 4x4/3, 64 3x3/2 and a 256-unit layer. Pixels are normalized with running
per-pixel statistics of the newest frame, applied to the whole stack. A resumed Atari run restarts its games
from fresh episodes (ale-py's state is not saved); everything else continues exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlzoo import normalizers as norm
from rlzoo.atari import AtariEnvs, atari_env_ids, atari_game
from rlzoo.cli import run_cli
from rlzoo.devices import synchronous_dispatch
from rlzoo.errors import RlzooError, close_matches
from rlzoo.evaluation import TrainingReturns
from rlzoo.networks import QNetwork
from rlzoo.optim import obgd
from rlzoo.options import RunConfig, option
from rlzoo.run import Run
from rlzoo.stepping import PerStep

MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")


@dataclass
class Config(RunConfig):
    TASKS: ClassVar[dict] = {
        # the paper's Atari agent: 10M steps, epsilon over the first 5%, a 256-unit dense layer
        "ALE/*": {"total_steps": 10_000_000, "eps_decay": 0.05, "hidden": 256, "chunk": 1000,
                  "eval_every": 100_000, "checkpoint_every": 500_000},
    }
    env: str = "Breakout-MinAtar"
    """Asterix-MinAtar, Breakout-MinAtar, Freeway-MinAtar or SpaceInvaders-MinAtar (gymnax), or an Atari game
    ALE/<Game>-v5 (ale-py)."""
    total_steps: int = option(5_000_000, ">= 1")
    """Env steps per seed (the paper's code: 5M on MinAtar)."""
    chunk: int = option(10_000, ">= 1")
    """Env steps per compiled chunk (one lax.scan)."""
    eval_every: int = option(50_000, ">= 1")
    """Report the mean return of the training episodes ended in each span of this many steps."""
    checkpoint_every: int = option(250_000, ">= 1")
    """Checkpoint every this many env steps (a multiple of chunk)."""
    lr: float = option(1.0, "> 0")
    """ObGD step size."""
    gamma: float = option(0.99, "[0, 1)")
    """Discount."""
    lam: float = option(0.8, "[0, 1]")
    """Trace decay lambda."""
    kappa: float = option(2.0, "> 0")
    """ObGD overshooting bound."""
    eps_start: float = option(1.0, "[0, 1]")
    """Initial exploration epsilon."""
    eps_finish: float = option(0.01, "[0, 1]")
    """Final exploration epsilon."""
    eps_decay: float = option(0.2, "(0, 1]")
    """Fraction of total_steps over which epsilon decays linearly."""
    hidden: int = option(128, ">= 1")
    """Width of the dense layer after the convolution."""
    sparsity: float = option(0.9, "[0, 1)")
    """Fraction of each unit's input weights set to 0 at initialization."""
    normalize_obs: bool = True
    """Normalize observations by their running mean and variance."""
    scale_rewards: bool = True
    """Divide rewards by the running std of the discounted return."""


def make_network(config: Config, num_actions: int) -> QNetwork:
    """The paper's networks, each layer + parameter-free LayerNorm + leaky ReLU: on MinAtar Conv 16 3x3 and
    Dense 128; on Atari Conv 32 8x8/5, 64 4x4/3, 64 3x3/2 and Dense 256."""
    if config.env.startswith("ALE/"):
        return QNetwork(num_actions, convs=((32, 8, 5), (64, 4, 3), (64, 3, 2)), hidden=(config.hidden,),
                        channels_first=True, sparse=config.sparsity, activation=nn.leaky_relu)
    return QNetwork(num_actions, convs=((16, 3, 1),), hidden=(config.hidden,), sparse=config.sparsity,
                    activation=nn.leaky_relu)


def td_step(config: Config, tx, network: QNetwork, params, opt, neg_q_sa, grads, reward, done, next_obs, reset):
    """The TD error of Q(s, a) (given as -Q(s, a) and its gradient) and one ObGD step along the trace."""
    q_next = network.apply(params, next_obs).max()
    delta = reward + config.gamma * (1.0 - done) * q_next + neg_q_sa
    updates, opt = tx.update(grads, opt, delta=delta, reset=reset)
    return optax.apply_updates(params, updates), opt, delta


def make_agent(config: Config):
    """(init(key), train_chunk(state)) for one seed; the env lives in the state."""
    import gymnax

    # gymnax's MinAtar writes ints into bool planes; jax 0.10 warns about it on every trace.
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)
    env, env_params = gymnax.make(config.env)
    network = make_network(config, env.num_actions)
    tx = obgd(config.lr, config.gamma, config.lam, config.kappa)
    obs_shape = tuple(env.observation_space(env_params).shape)
    epsilon = optax.linear_schedule(config.eps_start, config.eps_finish,
                                    max(int(config.eps_decay * config.total_steps), 1))

    def observe(stats, raw_obs):
        raw_obs = raw_obs.astype(jnp.float32)
        return norm.obs_normalize(stats, raw_obs) if config.normalize_obs else (stats, raw_obs)

    def init(key: jax.Array) -> dict:
        k_net, k_env, key = jax.random.split(key, 3)
        raw_obs, env_state = env.reset(k_env, env_params)
        stats, obs = observe(norm.mean_var_init(obs_shape), raw_obs)
        params = network.init(k_net, obs)
        zero = jnp.float32(0.0)
        return {"params": params, "opt": tx.init(params), "obs_stats": stats, "reward_scale": norm.reward_scale_init(),
                "env": env_state, "obs": obs, "t": jnp.int32(0), "key": key, "ep_return": zero,
                "episodes": {"total": zero, "count": zero, "last": jnp.float32(jnp.nan)}}

    def step(state: dict, _):
        key, k_explore, k_action, k_step, k_reset = jax.random.split(state["key"], 5)
        params, obs = state["params"], state["obs"]
        q, q_vjp = jax.vjp(lambda p: network.apply(p, obs), params)  # one forward pass for acting and learning
        greedy = jnp.argmax(q)
        explore = jax.random.uniform(k_explore) < epsilon(state["t"])
        action = jnp.where(explore, jax.random.randint(k_action, (), 0, env.num_actions), greedy)
        neg_q_sa, (grads,) = -q[action], q_vjp(-jax.nn.one_hot(action, env.num_actions))  # grad of -Q(s, a)
        raw_next, env_state, reward, done, _ = env.step_env(k_step, state["env"], action, env_params)
        reward = reward.astype(jnp.float32)
        stats, next_obs = observe(state["obs_stats"], raw_next)
        reward_scale, scaled = state["reward_scale"], reward
        if config.scale_rewards:
            reward_scale, scaled = norm.reward_scale(reward_scale, reward, done, config.gamma)

        params, opt, delta = td_step(config, tx, network, params, state["opt"], neg_q_sa, grads, scaled, done,
                                     next_obs, done | (action != greedy))

        raw_reset, reset_state = env.reset_env(k_reset, env_params)
        reset_stats, reset_obs = observe(stats, raw_reset)
        stats, obs, env_state = norm.where_tree(done, (reset_stats, reset_obs, reset_state),
                                                (stats, next_obs, env_state))
        ep_return = state["ep_return"] + reward
        ep = state["episodes"]
        episodes = {"total": ep["total"] + jnp.where(done, ep_return, 0.0), "count": ep["count"] + done,
                    "last": jnp.where(done, ep_return, ep["last"])}
        state = {**state, "params": params, "opt": opt, "obs_stats": stats, "reward_scale": reward_scale,
                 "env": env_state, "obs": obs, "t": state["t"] + 1, "key": key,
                 "ep_return": jnp.where(done, 0.0, ep_return), "episodes": episodes}
        return state, {"abs_td_error": jnp.abs(delta), "step_size": opt.step_size, "q_max": q.max()}

    def train_chunk(state: dict):
        state, metrics = jax.lax.scan(step, state, None, length=config.chunk)
        metrics = {k: v.mean()[None] for k, v in metrics.items()}
        episodes = state["episodes"]
        cleared = {"total": jnp.float32(0.0), "count": jnp.float32(0.0), "last": episodes["last"]}
        metrics["epsilon"] = epsilon(state["t"])[None]
        return {**state, "episodes": cleared}, (metrics, episodes)

    return network, init, train_chunk


def make_atari_agent(config: Config, num_actions: int, obs_shape: tuple[int, ...]):
    """(network, init(key, raw_obs), step(state, raw_obs, reward, done, valid) -> (state, action)) for one seed:
    learn from the step just taken (none when ale-py marks it invalid: the step that restarts a game), then act."""
    network = make_network(config, num_actions)
    tx = obgd(config.lr, config.gamma, config.lam, config.kappa)
    epsilon = optax.linear_schedule(config.eps_start, config.eps_finish,
                                    max(int(config.eps_decay * config.total_steps), 1))

    def observe(stats, raw_obs):
        """Running per-pixel statistics of the newest frame, applied to the whole stack [4, 84, 84]."""
        frames = raw_obs.astype(jnp.float32)
        if not config.normalize_obs:
            return stats, frames
        stats = norm.mean_var_update(stats, frames[-1])
        return stats, (frames - stats.mean) / jnp.sqrt(norm.variance(stats) + 1e-8)

    def act(params, obs, key, t):
        k_explore, k_action = jax.random.split(key)
        greedy = jnp.argmax(network.apply(params, obs))
        explore = jax.random.uniform(k_explore) < epsilon(t)
        return jnp.where(explore, jax.random.randint(k_action, (), 0, num_actions), greedy), greedy

    def init(key: jax.Array, raw_obs: jax.Array) -> dict:
        k_net, k_act, key = jax.random.split(key, 3)
        stats, obs = observe(norm.mean_var_init(obs_shape[1:]), raw_obs)
        params = network.init(k_net, obs)
        action, greedy = act(params, obs, k_act, 0)
        return {"params": params, "opt": tx.init(params), "obs_stats": stats, "reward_scale": norm.reward_scale_init(),
                "obs": obs, "action": action, "greedy": greedy, "t": jnp.int32(1), "key": key}

    def step(state: dict, raw_obs, reward, done, valid):
        key, k_act = jax.random.split(state["key"])
        params, action, obs = state["params"], state["action"], state["obs"]
        stats, next_obs = observe(state["obs_stats"], raw_obs)
        reward_scale, scaled = state["reward_scale"], reward
        if config.scale_rewards:
            reward_scale, scaled = norm.reward_scale(reward_scale, reward, done, config.gamma)
        neg_q_sa, grads = jax.value_and_grad(lambda p: -network.apply(p, obs)[action])(params)
        new_params, opt, delta = td_step(config, tx, network, params, state["opt"], neg_q_sa, grads, scaled, done,
                                         next_obs, done | (action != state["greedy"]))
        # a restarting game's step teaches nothing: keep the parameters, start the traces afresh
        new_params = norm.where_tree(valid, new_params, params)
        opt = opt._replace(trace=norm.where_tree(valid, opt.trace, jax.tree_util.tree_map(jnp.zeros_like, opt.trace)))
        reward_scale = norm.where_tree(valid, reward_scale, state["reward_scale"])
        next_action, greedy = act(new_params, next_obs, k_act, state["t"])
        return {**state, "params": new_params, "opt": opt, "obs_stats": stats, "reward_scale": reward_scale,
                "obs": next_obs, "action": next_action, "greedy": greedy, "t": state["t"] + 1, "key": key}, \
            (next_action, jnp.abs(delta) * valid, opt.step_size)

    return network, init, step, epsilon


def check_config(config: Config) -> None:
    if config.env.startswith("ALE/"):
        if config.env not in atari_env_ids():
            matches = close_matches(config.env, atari_env_ids())
            raise RlzooError(f"unknown Atari game '{config.env}' for stream Q. "
                             + (f"Close matches: {', '.join(matches)}. " if matches else "")
                             + "Atari games are named ALE/<Game>-v5, e.g. ALE/Breakout-v5.")
        return
    if config.env not in MINATAR:
        matches = close_matches(config.env, [*MINATAR, "ALE/Breakout-v5"])
        raise RlzooError(f"unknown environment '{config.env}' for stream Q. "
                         + (f"Close matches: {', '.join(matches)}. " if matches else "")
                         + f"It takes one of {', '.join(MINATAR)} (gymnax), or an Atari game ALE/<Game>-v5.")


def atari_main(run: Run) -> dict:
    """Stream Q on Atari: the games on the host, one jitted update-and-act call per env step for all seeds."""
    config = run.config
    envs = AtariEnvs(atari_game(config.env), len(run.seeds), config.seed, clip_rewards=False, episodic_life=True,
                     sticky_actions=0.0)
    raw_obs = envs.reset()
    network, init, step, epsilon = make_atari_agent(config, envs.num_actions, envs.obs_shape)
    returns = TrainingReturns(config.num_seeds)
    state = run.restore(jax.jit(jax.vmap(init))(run.keys, jnp.asarray(raw_obs)), host={"returns": returns},
                        note=" (Atari games restart from fresh episodes)")
    step = PerStep(step, state)
    score = np.zeros(config.num_seeds)

    def chunk(state):
        action, carry = np.asarray(state["action"]), step.enter(state)
        total, count, last = np.zeros_like(score), np.zeros_like(score), np.full_like(score, np.nan)
        abs_td, sizes = 0.0, 0.0
        for _ in range(config.chunk):
            obs, _, done, valid, raw_reward, game_over = envs.step(action)
            reward = np.where(valid, raw_reward, 0.0).astype(np.float32)  # rewards scaled on the device
            carry, (action, delta, size) = step(carry, obs, reward, done, valid)
            action = np.asarray(action)
            score[:] += raw_reward
            total += np.where(game_over, score, 0.0)
            count += game_over
            last = np.where(game_over, score, last)
            score[game_over] = 0.0
            abs_td, sizes = abs_td + np.asarray(delta), sizes + np.asarray(size)
        returns.add(total, count, last)
        state = step.leave(carry)
        return state, {"abs_td_error": jnp.asarray(abs_td / config.chunk)[:, None],
                       "step_size": jnp.asarray(sizes / config.chunk)[:, None],
                       "epsilon": jnp.full((config.num_seeds, 1), epsilon(state["t"][0])),
                       "episode_return": jnp.asarray(np.nan_to_num(returns.last))[:, None]}

    state = run.train(state, chunk, lambda state: returns.report(), "return")
    run.save_policy({"params": state["params"], "obs_stats": state["obs_stats"]._asdict()}, backend="atari")
    return run.finish(task=config.env, data_source="online", close=[envs])


def main(config: Config) -> dict:
    if config.env.startswith("ALE/"):
        synchronous_dispatch()  # one small jitted call per env step, whose result the host waits for
    run = Run.start(config, "stream_q", prepare=check_config)
    if config.env.startswith("ALE/"):
        return atari_main(run)
    config = run.config
    network, init, train_chunk = make_agent(config)
    returns = TrainingReturns(config.num_seeds)
    state = run.restore(jax.jit(jax.vmap(init))(run.keys), host={"returns": returns})
    chunk_jit = jax.jit(jax.vmap(train_chunk), donate_argnums=0)

    def chunk(state):
        state, (metrics, episodes) = chunk_jit(state)
        episodes = jax.device_get(episodes)
        returns.add(episodes["total"], episodes["count"], episodes["last"])
        return state, {**metrics, "episode_return": jnp.asarray(np.nan_to_num(returns.last))[:, None]}

    state = run.train(state, chunk, lambda state: returns.report(), "return")
    run.save_policy({"params": state["params"], "obs_stats": state["obs_stats"]._asdict()}, backend="minatar")
    return run.finish(task=config.env, data_source="online")


if __name__ == "__main__":
    run_cli(main, Config)
