"""PQN — Parallelised Q-Network (Gallici et al., 2024, "Simplifying Deep Temporal Difference Learning").

Q-learning with neither a replay buffer nor a target network. Many environments are stepped in parallel
with an epsilon-greedy policy (epsilon decays linearly); every rollout of T steps x N envs is turned
into Q(lambda) targets by one reverse scan over time,

    G_{T-1} = r_{T-1} + gamma (1 - d_{T-1}) max_a Q(s_T, a)
    G_t     = r_t + gamma (1 - d_t) [ (1 - lambda) max_a Q(s_{t+1}, a) + lambda G_{t+1} ],

(d_t = 1 ends the episode: its target is r_t), with the max-Q values recorded while acting. The
rollout is then used for several epochs of minibatch regressions, loss = 0.5 (Q(s_t, a_t) - G_t)^2,
with RAdam, global-norm clipping and a linearly decayed learning rate. What keeps this stable without
a target network is LayerNorm after every hidden layer of the Q-network.

Two environment back-ends behind one small interface, chosen from --env:
  MinAtar (gymnax, e.g. Breakout-MinAtar): env, rollout, lambda-returns and updates of a whole chunk
    run in one `jax.jit(jax.vmap(train_chunk))` over seeds; the host sees the device once per chunk.
  Atari (ale-py, e.g. ALE/Breakout-v5 or Breakout): one `AtariVectorEnv` holds seeds x envs games with
    the standard preprocessing (frame skip 4, 84x84 grayscale, 4-frame stack, v5 sticky actions), reward
    clipping and episodic life for training (rlzoo.wrappers), the raw score for evaluation. The host
    steps it with one jitted policy call per vector step (--no-atari-xla), or the env runs inside the
    jitted rollout through ale-py's XLA interface (--atari-xla, the default).
Defaults are the paper's MinAtar table (128 envs x 32 steps, lr 5e-4 decayed to 0, lambda 0.65, 2 epochs
x 32 minibatches, epsilon 1 -> 0.05 over the first 10%) and, for an Atari --env, its Atari table
(lr 2.5e-4 constant, epsilon -> 0.001, 5e7 env steps = 2e8 frames). Differences from the reference code
(purejaxql): MinAtar observations (0/1 planes) are not divided by 255 (--minatar-obs-div-255 does);
env steps are rounded to whole chunks (9,994,240 instead of 1e7); Atari uses v5 sticky actions (0.25)
where the paper used none; after a lost life the game simply goes on, where envpool (the reference's env,
for its greedy test episodes too) plays no-ops and FIRE, so in games such as Breakout the agent must learn
to press FIRE itself; an episode cut by the time limit is treated as terminal, as the reference does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from rlzoo.errors import RlzooError, close_matches, run_cli
from rlzoo.networks import PatchConv
from rlzoo.run import (
    RunConfig,
    finish,
    make_logger,
    resume_state,
    save_policy,
    seed_keys,
    shard_seeds,
    start_run,
    train_loop,
)
from rlzoo.wrappers import AtariEnvs, atari_env_ids, atari_game, atari_signals


@dataclass
class Config(RunConfig):
    env: str = "Breakout-MinAtar"
    """Asterix-MinAtar, Breakout-MinAtar, Freeway-MinAtar, SpaceInvaders-MinAtar (gymnax), or an Atari game
    (ALE/Breakout-v5, Breakout, ...; ale-py), which switches the defaults to the paper's Atari table."""
    total_steps: int = 9_994_240
    """Env steps per seed (per env batch: num_envs steps per vector step); 1e7 rounded down to whole chunks."""
    chunk: int = 81_920
    """Env steps per compiled chunk (a multiple of num_envs x num_steps: 20 rollouts by default)."""
    eval_every: int = 491_520
    """Greedy evaluation every this many env steps (a multiple of chunk)."""
    checkpoint_every: int = 491_520
    """Checkpoint every this many env steps (a multiple of chunk)."""
    eval_episodes: int = 128
    """Greedy evaluation episodes per seed, run as parallel envs (the paper: 128 on MinAtar)."""
    num_envs: int = 128
    """Parallel environments per seed."""
    num_steps: int = 32
    """Steps per environment in each rollout."""
    num_epochs: int = 2
    """Passes over each rollout."""
    num_minibatches: int = 32
    """Minibatches per pass (minibatch size = num_envs x num_steps / num_minibatches)."""
    lr: float = 5e-4
    """RAdam learning rate."""
    lr_linear_decay: bool = True
    """Decay the learning rate linearly to 0 over decay_steps."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""
    gamma: float = 0.99
    """Discount."""
    lam: float = 0.65
    """lambda of the Q(lambda) targets."""
    eps_start: float = 1.0
    """Initial exploration epsilon."""
    eps_finish: float = 0.05
    """Final exploration epsilon."""
    eps_decay: float = 0.1
    """Fraction of decay_steps over which epsilon decays linearly."""
    decay_steps: int = 0
    """Env steps the learning-rate and epsilon schedules span (0: total_steps)."""
    sticky_actions: float = 0.25
    """Atari: probability of repeating the previous action (Gymnasium v5 default; the paper used 0)."""
    clip_rewards: bool = True
    """Atari: train on sign(reward) (evaluation always reports the raw score)."""
    episodic_life: bool = True
    """Atari: a lost life ends the episode for learning (not for evaluation)."""
    env_threads: int = 0
    """Atari: ale-py worker threads (0: one per core)."""
    atari_xla: bool = True
    """Atari: step ale-py inside the jitted rollout (its XLA interface) instead of from the host."""
    eval_max_steps: int = 27_000
    """Atari: cap of a greedy evaluation episode in agent steps (27k = the 108k-frame limit)."""
    minatar_obs_div_255: bool = False
    """MinAtar: divide the 0/1 observation planes by 255 as the reference code does (for comparing with it)."""


ATARI_DEFAULTS = {
    "env": "ALE/Breakout-v5",
    "total_steps": 49_971_200,
    "lr": 2.5e-4,
    "lr_linear_decay": False,
    "eps_finish": 0.001,
    "eval_episodes": 8,
    "eval_every": 2_457_600,
    "checkpoint_every": 2_457_600,
}
"""The paper's Atari table where it differs from MinAtar (5e7 env steps = 2e8 frames, rounded to chunks)."""

MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")


def resolve_env(env_id: str) -> tuple[str, str]:
    """("minatar", gymnax id) or ("atari", ale-py game); anything else gets a paragraph with close matches."""
    if env_id in MINATAR:
        return "minatar", env_id
    game = atari_game(env_id)
    if game is not None:
        return "atari", game
    matches = close_matches(env_id, [*MINATAR, *atari_env_ids()])
    raise RlzooError(
        f"unknown environment '{env_id}' for PQN. "
        + (f"Close matches: {', '.join(matches)}. " if matches else "")
        + "PQN takes a MinAtar game through gymnax (Asterix-MinAtar, Breakout-MinAtar, Freeway-MinAtar, "
        "SpaceInvaders-MinAtar) or an Atari game through ale-py (ALE/Breakout-v5, or just Breakout)."
    )


def default_config(env: str, **overrides) -> Config:
    """The paper's defaults for `env`'s back-end (MinAtar or Atari), then `overrides`."""
    base = ATARI_DEFAULTS if resolve_env(env)[0] == "atari" else {}
    return Config(**{**base, "env": env, **overrides})


def cli_defaults(argv: list[str]) -> Config | None:
    """Pick the defaults `--help` and the run start from by the --env on the command line."""
    env = next((a.split("=", 1)[1] for a in argv if a.startswith("--env=")), None)
    if env is None and "--env" in argv and argv.index("--env") + 1 < len(argv):
        env = argv[argv.index("--env") + 1]
    return default_config(env) if env and "--resume" not in argv else None


# ---- network ----
class QNetwork(nn.Module):
    """Q(s, .): convolutions, then dense layers, each followed by LayerNorm and ReLU; a linear output."""

    num_actions: int
    convs: Sequence[tuple[int, int, int]]  # (features, kernel size, stride), VALID padding
    hidden: Sequence[int]
    channels_first: bool = False  # ale-py stacks frames first: [4, 84, 84]
    scale: float = 1.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs.astype(jnp.float32) * self.scale
        if self.channels_first:
            x = jnp.moveaxis(x, -3, -1)
        for features, kernel, stride in self.convs:
            x = PatchConv(features, (kernel, kernel), (stride, stride), kernel_init=nn.initializers.he_normal())(x)
            x = nn.relu(nn.LayerNorm()(x))  # over channels, at every position
        x = x.reshape(*x.shape[:-3], -1)
        for width in self.hidden:
            x = nn.relu(nn.LayerNorm()(nn.Dense(width, kernel_init=nn.initializers.he_normal())(x)))
        return nn.Dense(self.num_actions)(x)


def make_network(backend: str, num_actions: int, minatar_obs_div_255: bool = False) -> QNetwork:
    if backend == "minatar":  # Conv 16 3x3 + LN + ReLU, Dense 128 + LN + ReLU, Dense |A|
        return QNetwork(num_actions, convs=((16, 3, 1),), hidden=(128,), scale=1 / 255 if minatar_obs_div_255 else 1.0)
    # Atari: the Nature DQN torso with LayerNorm after every layer
    return QNetwork(
        num_actions, convs=((32, 8, 4), (64, 4, 2), (64, 3, 1)), hidden=(512,), channels_first=True, scale=1.0 / 255.0
    )


# ---- targets, loss, update ----
def q_lambda_returns(rewards: jax.Array, dones: jax.Array, next_q: jax.Array, gamma: float, lam: float) -> jax.Array:
    """Q(lambda) targets of a time-major rollout [T, ...]; next_q[t] = max_a Q(s_{t+1}, a)."""

    def backward(g_next, t):
        r, d, q = t
        g = r + gamma * (1.0 - d) * ((1.0 - lam) * q + lam * g_next)
        return g, g

    _, returns = jax.lax.scan(backward, next_q[-1], (rewards, dones, next_q), reverse=True)
    return returns


def eps_greedy(key: jax.Array, q: jax.Array, eps: jax.Array) -> jax.Array:
    """Per env: a uniform random action with probability eps, else argmax_a q."""
    k_explore, k_action = jax.random.split(key)
    random_action = jax.random.randint(k_action, q.shape[:-1], 0, q.shape[-1])
    explore = jax.random.uniform(k_explore, q.shape[:-1]) < eps
    return jnp.where(explore, random_action, jnp.argmax(q, axis=-1)).astype(jnp.int32)


def schedules(config: Config):
    """(epsilon as a function of the rollout count, learning rate as a function of the gradient-step count)."""
    rollouts = (config.decay_steps or config.total_steps) // (config.num_envs * config.num_steps)
    eps = optax.linear_schedule(config.eps_start, config.eps_finish, max(int(config.eps_decay * rollouts), 1))
    grad_steps = rollouts * config.num_epochs * config.num_minibatches
    lr = (
        optax.linear_schedule(config.lr, 0.0, grad_steps)
        if config.lr_linear_decay
        else optax.constant_schedule(config.lr)
    )
    return eps, lr


def init_state(config: Config, network: QNetwork, key: jax.Array, obs_shape: tuple[int, ...]) -> dict:
    """Learner state of one seed: network + optimizer, RNG, rollouts done."""
    k_net, key = jax.random.split(key)
    _, lr = schedules(config)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.radam(lr))
    params = network.init(k_net, jnp.zeros((1, *obs_shape)))
    return {
        "train": TrainState.create(apply_fn=network.apply, params=params, tx=tx),
        "key": key,
        "rollouts": jnp.int32(0),
    }


def make_learn(config: Config, network: QNetwork):
    """learn(state, rollout, last_obs) for one seed: lambda-returns, then epochs x minibatches of updates.

    `rollout` is time-major [T, N, ...] with obs, action, reward, done, valid (False for the transition
    ale-py spends resetting a finished game) and q_max = max_a Q(obs, a) recorded while acting."""
    eps_schedule, lr_schedule = schedules(config)

    def loss_fn(params, batch):
        q = network.apply(params, batch["obs"])
        q_taken = jnp.take_along_axis(q, batch["action"][:, None], axis=-1)[:, 0]
        weight = batch["valid"].astype(jnp.float32)
        loss = 0.5 * jnp.sum(weight * (q_taken - batch["target"]) ** 2) / jnp.maximum(weight.sum(), 1.0)
        return loss, q_taken.mean()

    def minibatch_step(train, batch):
        (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(train.params, batch)
        return train.apply_gradients(grads=grads), (loss, q_mean)

    def learn(state: dict, rollout: dict, last_obs: jax.Array) -> tuple[dict, dict]:
        train = state["train"]
        key, k_epochs = jax.random.split(state["key"])
        last_q = network.apply(train.params, last_obs).max(-1)
        next_q = jnp.concatenate([rollout["q_max"][1:], last_q[None]])
        targets = q_lambda_returns(
            rollout["reward"], rollout["done"].astype(jnp.float32), next_q, config.gamma, config.lam
        )
        data = {"obs": rollout["obs"], "action": rollout["action"], "valid": rollout["valid"], "target": targets}
        data = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), data)  # [T * N, ...]
        size = data["action"].shape[0]

        def epoch(train, k):
            perm = jax.random.permutation(k, size).reshape(config.num_minibatches, -1)
            return jax.lax.scan(minibatch_step, train, jax.tree_util.tree_map(lambda x: x[perm], data))

        train, (loss, q_mean) = jax.lax.scan(epoch, train, jax.random.split(k_epochs, config.num_epochs))
        metrics = {
            "loss": loss.mean(),
            "q_mean": q_mean.mean(),
            "epsilon": eps_schedule(state["rollouts"]),
            "lr": lr_schedule(train.step),
        }
        return {**state, "train": train, "key": key, "rollouts": state["rollouts"] + 1}, metrics

    return learn


def act(network: QNetwork, params, key: jax.Array, obs: jax.Array, eps: jax.Array):
    """(epsilon-greedy actions, max_a Q(obs, a)) for a batch of observations of one seed."""
    q = network.apply(params, obs)
    return eps_greedy(key, q, eps), q.max(-1)


# ---- MinAtar: everything in one jitted, seed-vmapped chunk ----
def make_minatar(config: Config, env_id: str):
    import warnings

    import gymnax

    # gymnax's MinAtar writes ints into bool planes; jax 0.10 warns about it on every trace.
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types", category=FutureWarning)
    env, env_params = gymnax.make(env_id)
    network = make_network("minatar", env.num_actions, config.minatar_obs_div_255)
    obs_shape = tuple(env.observation_space(env_params).shape)
    learn = make_learn(config, network)
    eps_schedule, _ = schedules(config)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    rollouts_per_chunk = config.chunk // (config.num_envs * config.num_steps)

    def init(key: jax.Array) -> dict:
        k_learner, k_env = jax.random.split(key)
        state = init_state(config, network, k_learner, obs_shape)
        obs, env_state = reset(jax.random.split(k_env, config.num_envs), env_params)
        zeros = jnp.zeros(config.num_envs, jnp.float32)
        return {**state, "env": {"state": env_state, "obs": obs, "ep_return": zeros, "last_return": zeros}}

    def env_step(carry, key):
        params, eps, envs = carry
        k_act, k_env = jax.random.split(key)
        obs_before = envs["obs"]
        action, q_max = act(network, params, k_act, obs_before, eps)
        obs, env_state, reward, done, _ = step(
            jax.random.split(k_env, config.num_envs), envs["state"], action, env_params
        )
        reward = reward.astype(jnp.float32)
        ep_return = envs["ep_return"] + reward
        envs = {
            "state": env_state,
            "obs": obs,
            "ep_return": jnp.where(done, 0.0, ep_return),
            "last_return": jnp.where(done, ep_return, envs["last_return"]),
        }
        transition = {
            "obs": obs_before,
            "action": action,
            "reward": reward,
            "done": done,
            "valid": jnp.ones_like(done),
            "q_max": q_max,
        }
        return (params, eps, envs), transition

    def rollout_and_learn(state: dict, _):
        key, k_rollout = jax.random.split(state["key"])
        eps = eps_schedule(state["rollouts"])
        carry = (state["train"].params, eps, state["env"])
        (_, _, envs), rollout = jax.lax.scan(env_step, carry, jax.random.split(k_rollout, config.num_steps))
        state, metrics = learn({**state, "key": key, "env": envs}, rollout, envs["obs"])
        return state, {**metrics, "episode_return": envs["last_return"].mean()}

    def train_chunk(state: dict):
        return jax.lax.scan(rollout_and_learn, state, None, length=rollouts_per_chunk)

    def evaluate(params, key: jax.Array) -> jax.Array:
        """Undiscounted return of the first greedy episode in each of eval_episodes envs."""
        k_reset, k_run = jax.random.split(key)
        obs, env_state = reset(jax.random.split(k_reset, config.eval_episodes), env_params)
        zeros = jnp.zeros(config.eval_episodes)

        def cond(carry):
            return carry[3].any() & (carry[5] < env_params.max_steps_in_episode)

        def body(carry):
            obs, env_state, returns, running, key, t = carry
            key, k_step = jax.random.split(key)
            action = jnp.argmax(network.apply(params, obs), axis=-1)
            obs, env_state, reward, done, _ = step(
                jax.random.split(k_step, config.eval_episodes), env_state, action, env_params
            )
            return obs, env_state, returns + reward * running, running & ~done, key, t + 1

        carry = (obs, env_state, zeros, jnp.ones(config.eval_episodes, bool), k_run, 0)
        return jax.lax.while_loop(cond, body, carry)[2]

    return network, init, train_chunk, evaluate


# ---- Atari: ale-py, host-stepped or inside the jit through its XLA interface ----
def make_atari(config: Config, game: str, num_seeds: int):
    """One AtariEnvs with num_seeds x num_envs games; its rows are seed-major."""
    envs = AtariEnvs(
        game,
        num_seeds * config.num_envs,
        0,
        clip_rewards=config.clip_rewards,
        episodic_life=config.episodic_life,
        sticky_actions=config.sticky_actions,
        num_threads=config.env_threads,
    )
    network = make_network("atari", envs.num_actions)
    learn = jax.vmap(make_learn(config, network), in_axes=(0, 0, 0))
    eps_schedule, _ = schedules(config)
    s, n, t_len = num_seeds, config.num_envs, config.num_steps
    act_all = jax.vmap(partial(act, network), in_axes=(0, 0, 0, None))
    rollouts_per_chunk = config.chunk // (n * t_len)
    return envs, network, learn, act_all, eps_schedule, (s, n, t_len, rollouts_per_chunk)


# Per seed: (the key the learner goes on with, the rollout's acting key), so acting never reuses a learner key.
split_rollout_keys = jax.vmap(lambda key: tuple(jax.random.split(key)))


def atari_host_chunk(config, envs, learn, act_all, eps_schedule, dims, host: dict):
    """Rollouts stepped from the host: one jitted, seed-vmapped policy call per vector step."""
    s, n, t_len, k = dims
    act_jit = jax.jit(act_all)
    learn_jit = jax.jit(learn, donate_argnums=0)
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    split_keys = jax.jit(split_rollout_keys)

    def chunk(state):
        blocks = []
        for _ in range(k):
            key, k_act = split_keys(state["key"])
            state = {**state, "key": key}
            eps = eps_schedule(int(state["rollouts"][0]))
            roll = {"obs": np.empty((s, t_len, n, *envs.obs_shape), np.uint8)}
            for name, dtype in (
                ("action", np.int32),
                ("reward", np.float32),
                ("done", bool),
                ("valid", bool),
                ("q_max", np.float32),
            ):
                roll[name] = np.empty((s, t_len, n), dtype)
            for t in range(t_len):
                obs = host["obs"].reshape(s, n, *envs.obs_shape)
                roll["obs"][:, t] = obs
                action, q_max = act_jit(state["train"].params, fold(k_act, t), obs, eps)
                action = np.asarray(action)
                next_obs, reward, done, valid, raw, game_over = envs.step(action.reshape(-1))
                roll["action"][:, t], roll["q_max"][:, t] = action, np.asarray(q_max)
                for name, value in (("reward", reward), ("done", done), ("valid", valid)):
                    roll[name][:, t] = value.reshape(s, n)
                host["obs"] = next_obs
                host["ep_return"] += raw
                host["last_return"] = np.where(game_over, host["ep_return"], host["last_return"])
                host["ep_return"] = np.where(game_over, 0.0, host["ep_return"])
            state, metrics = learn_jit(state, roll, host["obs"].reshape(s, n, *envs.obs_shape))
            metrics["episode_return"] = host["last_return"].reshape(s, n).mean(1)
            blocks.append(metrics)
        return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=1), *blocks)

    return chunk


def atari_xla_chunk(config, envs, learn, act_all, eps_schedule, dims, host: dict):
    """The same rollouts with ale-py's XLA functions inside one jitted chunk (env steps need no host trip)."""
    s, n, t_len, k = dims
    handle, _, xla_step = envs.env.xla()
    obs_shape = envs.obs_shape

    def env_step(carry, t):
        params, k_act, eps, env = carry
        obs = env["obs"].reshape(s, n, *obs_shape)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(k_act, t)
        action, q_max = act_all(params, keys, obs, eps)
        handle, (next_obs, reward, terminated, truncated, info) = xla_step(env["handle"], action.reshape(-1))
        reward = reward.astype(jnp.float32)
        train_reward, done, valid, game_over = atari_signals(
            reward,
            terminated,
            truncated,
            info["lives"],
            env["lives"],
            env["game_over"],
            config.clip_rewards,
            config.episodic_life,
            xp=jnp,
        )
        ep_return = env["ep_return"] + reward * valid
        env = {
            "handle": handle,
            "obs": next_obs,
            "lives": info["lives"],
            "game_over": game_over,
            "ep_return": jnp.where(game_over, 0.0, ep_return),
            "last_return": jnp.where(game_over, ep_return, env["last_return"]),
        }
        per_seed = lambda x: x.reshape(s, n)
        transition = {
            "obs": obs,
            "action": action,
            "reward": per_seed(train_reward),
            "done": per_seed(done),
            "valid": per_seed(valid),
            "q_max": q_max,
        }
        return (params, k_act, eps, env), transition

    def rollout_and_learn(carry, _):
        state, env = carry
        key, k_act = split_rollout_keys(state["key"])
        eps = eps_schedule(state["rollouts"][0])
        (_, _, _, env), roll = jax.lax.scan(env_step, (state["train"].params, k_act, eps, env), jnp.arange(t_len))
        roll = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), roll)  # [seeds, T, N, ...]
        state, metrics = learn({**state, "key": key}, roll, env["obs"].reshape(s, n, *obs_shape))
        return (state, env), {**metrics, "episode_return": env["last_return"].reshape(s, n).mean(1)}

    @partial(jax.jit, donate_argnums=0)
    def run_chunk(state, env):
        (state, env), metrics = jax.lax.scan(rollout_and_learn, (state, env), None, length=k)
        return state, env, jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), metrics)

    env = {
        "handle": handle,
        "obs": jnp.asarray(host["obs"]),
        "lives": jnp.asarray(envs.lives),
        "game_over": jnp.asarray(envs.game_over),
        "ep_return": jnp.asarray(host["ep_return"], jnp.float32),
        "last_return": jnp.asarray(host["last_return"], jnp.float32),
    }

    def chunk(state):
        nonlocal env
        state, env, metrics = run_chunk(state, env)
        return state, metrics

    return chunk


def atari_evaluator(config: Config, game: str, network: QNetwork, seeds: list[int], evals_done: int):
    """Greedy episodes with the raw game score: no reward clipping, no episodic life, v5 sticky actions."""
    episodes = config.eval_episodes
    envs = AtariEnvs(
        game,
        len(seeds) * episodes,
        0,
        clip_rewards=False,
        episodic_life=False,
        sticky_actions=config.sticky_actions,
        num_threads=config.env_threads,
    )
    greedy = jax.jit(jax.vmap(lambda params, obs: jnp.argmax(network.apply(params, obs), axis=-1)))
    calls = evals_done

    def evaluate(params) -> np.ndarray:
        nonlocal calls
        obs = envs.reset(seed=1_000_000 + 10_000 * calls + seeds[0] * episodes)
        calls += 1
        returns = np.zeros(envs.num_envs)
        running = np.ones(envs.num_envs, bool)
        for _ in range(config.eval_max_steps):
            action = np.asarray(greedy(params, obs.reshape(len(seeds), episodes, *envs.obs_shape)))
            obs, _, _, valid, raw, game_over = envs.step(action.reshape(-1))
            returns += raw * running
            running &= ~game_over
            if not running.any():
                break
        if running.any():
            print(f"[rlzoo] evaluation: {running.sum()} of {envs.num_envs} games were still going after "
                  f"--eval-max-steps {config.eval_max_steps} agent steps; their raw scores are partial", flush=True)
        return returns.reshape(len(seeds), episodes)

    return evaluate, envs


# ---- main ----
def check_config(config: Config) -> None:
    resolve_env(config.env)
    rollout = config.num_envs * config.num_steps
    if config.chunk % rollout:
        raise RlzooError(
            f"--chunk {config.chunk} must be a multiple of --num-envs x --num-steps "
            f"({config.num_envs} x {config.num_steps} = {rollout}), the env steps of one rollout"
        )
    if rollout % config.num_minibatches:
        raise RlzooError(f"--num-minibatches {config.num_minibatches} must divide num_envs x num_steps ({rollout})")


def main(config: Config) -> dict:
    run = start_run(config, "pqn", prepare=check_config)
    config = run.config
    backend, name = resolve_env(config.env)
    keys = seed_keys(run.seeds)
    t0 = time.perf_counter()
    if backend == "minatar":
        network, init, train_chunk, evaluate_one = make_minatar(config, name)
        state = jax.jit(jax.vmap(init))(keys)
        state, start_step, _ = resume_state(run, state)  # the envs are in the device state: continues exactly
        state, _ = shard_seeds(state)
        chunk = jax.jit(jax.vmap(train_chunk), donate_argnums=0)
        eval_jit = jax.jit(jax.vmap(evaluate_one, in_axes=(0, 0)))
        eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        step = start_step

        def evaluate(state):
            returns = np.asarray(
                eval_jit(state["train"].params, jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, step))
            )
            return returns, returns.mean(1)

        def chunk_fn(state):
            nonlocal step
            step += config.chunk
            return chunk(state)

        closers = []
    else:
        envs, network, learn, act_all, eps_schedule, dims = make_atari(config, name, len(run.seeds))
        state = jax.jit(jax.vmap(lambda k: init_state(config, network, k, envs.obs_shape)))(keys)
        # The learner state is restored exactly; the games restart (ale-py cannot save them).
        state, start_step, _ = resume_state(run, state, note=" (Atari games restart from fresh episodes)")
        n = envs.num_envs
        host = {
            "obs": envs.reset(seed=run.seeds[0] * config.num_envs + 7919 * (start_step // config.chunk)),
            "ep_return": np.zeros(n, np.float32),
            "last_return": np.zeros(n, np.float32),
        }
        make_chunk = atari_xla_chunk if config.atari_xla else atari_host_chunk
        chunk_fn = make_chunk(config, envs, learn, act_all, eps_schedule, dims, host)
        eval_fn, eval_envs = atari_evaluator(config, name, network, run.seeds, start_step // config.eval_every)

        def evaluate(state):
            returns = eval_fn(state["train"].params)
            return returns, returns.mean(1)

        closers = [envs, eval_envs]

    logger = make_logger(run, "return", start_step)
    state = train_loop(run, state, chunk_fn, evaluate, logger, start_step)
    save_policy(run, state["train"].params, backend=backend)
    for c in closers:
        c.close()
    return finish(run, logger, "return", config.env, "online", time.perf_counter() - t0)


if __name__ == "__main__":
    run_cli(main, Config, cli_defaults)
