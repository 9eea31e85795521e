"""PQN — Parallelised Q-Network (Gallici et al., 2024) on Atari through ale-py.

The algorithm of `pqn.py` (no replay buffer, no target network, LayerNorm, Q(lambda) targets from each
rollout, epochs of minibatch regressions with loss 0.5 (Q(s_t, a_t) - G_t)^2, RAdam), with its learner
repeated here so that this file reads alone, on Atari games: one `AtariEnvs` holds seeds x envs games with
the standard preprocessing (frame skip 4, 84x84 grayscale, 4-frame stack, v5 sticky actions), reward
clipping and episodic life for training (rlzoo.atari), the raw score for evaluation. The games run inside
the jitted rollout through ale-py's XLA interface (--atari-xla, the default), or the host steps them with
one jitted policy call per vector step (--no-atari-xla).

Defaults are the paper's Atari table: 128 envs x 32 steps, lr 2.5e-4 constant, lambda 0.65, epsilon
1 -> 0.001 over the first 10%, 5e7 env steps = 2e8 frames (rounded to chunks). Differences from the
reference code (purejaxql, on envpool): v5 sticky actions (0.25) where the paper used none; after a lost
life the game simply goes on, where envpool plays no-ops and FIRE, so in games such as Breakout the agent
must learn to press FIRE itself; an episode cut by the time limit is treated as terminal, as the reference
does. ale-py cannot save its emulators, so a resumed run restarts the games from fresh episodes.
Value heads (--value-head) work as in `pqn.py`; the default support spans the returns of clipped rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from rlzoo import heads
from rlzoo.atari import AtariEnvs, atari_env_ids, atari_game, atari_signals
from rlzoo.cli import run_cli
from rlzoo.errors import RlzooError, close_matches
from rlzoo.networks import QNetwork
from rlzoo.options import RunConfig, option
from rlzoo.qlearning import act_eps_greedy, q_lambda_returns
from rlzoo.run import Run


@dataclass
class Config(heads.HeadOptions, RunConfig):
    env: str = "ALE/Breakout-v5"
    """An Atari game: ALE/Breakout-v5, or just Breakout (ale-py's ROMs)."""
    total_steps: int = option(49_971_200, ">= 1")
    """Env steps per seed (per env batch: num_envs steps per vector step); 5e7 (2e8 frames) rounded to chunks."""
    chunk: int = option(81_920, ">= 1")
    """Env steps per compiled chunk (a multiple of num_envs x num_steps: 20 rollouts by default)."""
    eval_every: int = option(2_457_600, ">= 1")
    """Greedy evaluation every this many env steps (a multiple of chunk)."""
    checkpoint_every: int = option(2_457_600, ">= 1")
    """Checkpoint every this many env steps (a multiple of chunk)."""
    eval_episodes: int = option(8, ">= 1")
    """Greedy evaluation episodes per seed, run as parallel games."""
    num_envs: int = option(128, ">= 1")
    """Parallel environments per seed."""
    num_steps: int = option(32, ">= 1")
    """Steps per environment in each rollout."""
    num_epochs: int = option(2, ">= 1")
    """Passes over each rollout."""
    num_minibatches: int = option(32, ">= 1")
    """Minibatches per pass (minibatch size = num_envs x num_steps / num_minibatches)."""
    lr: float = option(2.5e-4, "> 0")
    """RAdam learning rate."""
    lr_linear_decay: bool = False
    """Decay the learning rate linearly to 0 over decay_steps."""
    max_grad_norm: float = option(10.0, "> 0")
    """Global gradient-norm clip."""
    gamma: float = option(0.99, "[0, 1]")
    """Discount."""
    lam: float = option(0.65, "[0, 1]")
    """lambda of the Q(lambda) targets."""
    eps_start: float = option(1.0, "[0, 1]")
    """Initial exploration epsilon."""
    eps_finish: float = option(0.001, "[0, 1]")
    """Final exploration epsilon."""
    eps_decay: float = option(0.1, "[0, 1]")
    """Fraction of decay_steps over which epsilon decays linearly."""
    decay_steps: int = option(0, ">= 0")
    """Env steps the learning-rate and epsilon schedules span (0: total_steps)."""
    sticky_actions: float = option(0.25, "[0, 1]")
    """Probability of repeating the previous action (Gymnasium v5 default; the paper used 0)."""
    clip_rewards: bool = True
    """Train on sign(reward) (evaluation always reports the raw score)."""
    episodic_life: bool = True
    """A lost life ends the episode for learning (not for evaluation)."""
    env_threads: int = option(0, ">= 0")
    """ale-py worker threads (0: one per core)."""
    atari_xla: bool = True
    """Step ale-py inside the jitted rollout (its XLA interface) instead of from the host."""
    eval_max_steps: int = option(27_000, ">= 1")
    """Cap of a greedy evaluation episode in agent steps (27k = the 108k-frame limit)."""


def reward_range(config: Config) -> tuple[float, float] | None:
    """Clipped rewards lie in [-1, 1] (a classification head's default support); raw scores have no such bound."""
    return (-1.0, 1.0) if config.clip_rewards else None


def make_head(config: Config) -> heads.ValueHead:
    """The value head; without clipped rewards a classification head needs --v-min and --v-max."""
    return heads.make_head(config, reward_range(config))


def make_network(num_actions: int, num_bins: int = 1) -> QNetwork:
    """The Nature DQN torso with LayerNorm after every layer; frames come channels-first from ale-py."""
    return QNetwork(num_actions, convs=((32, 8, 4), (64, 4, 2), (64, 3, 1)), hidden=(512,), channels_first=True,
                    scale=1.0 / 255.0, num_bins=num_bins)


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
    head = make_head(config)
    network = make_network(envs.num_actions, head.out_dim)
    q_values = lambda params, obs: head.value(network.apply(params, obs))
    learn = jax.vmap(make_learn(config, network), in_axes=(0, 0, 0))
    eps_schedule, _ = schedules(config)
    s, n, t_len = num_seeds, config.num_envs, config.num_steps
    act_all = jax.vmap(partial(act_eps_greedy, q_values), in_axes=(0, 0, 0, None))
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
    head = make_head(config)
    greedy = jax.jit(jax.vmap(lambda params, obs: jnp.argmax(head.value(network.apply(params, obs)), axis=-1)))
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


def check_config(config: Config) -> str:
    """The game's ale-py ROM name; bad options get a paragraph."""
    make_head(config)
    game = atari_game(config.env)
    if game is None:
        matches = close_matches(config.env, atari_env_ids())
        raise RlzooError(f"unknown Atari game '{config.env}' for PQN. "
                         + (f"Close matches: {', '.join(matches)}. " if matches else "")
                         + "It takes an ale-py game (ALE/Breakout-v5, or just Breakout); for MinAtar use "
                         "algorithms/pqn.py.")
    rollout = config.num_envs * config.num_steps
    if config.chunk % rollout:
        raise RlzooError(f"--chunk {config.chunk} must be a multiple of --num-envs x --num-steps "
                         f"({config.num_envs} x {config.num_steps} = {rollout}), the env steps of one rollout")
    if rollout % config.num_minibatches:
        raise RlzooError(f"--num-minibatches {config.num_minibatches} must divide num_envs x num_steps ({rollout})")
    return game


def main(config: Config) -> dict:
    run = Run.start(config, "pqn", prepare=check_config,
                    complete=lambda c, _: heads.with_support(c, reward_range(c)))
    config, game = run.config, run.prepared
    envs, network, learn, act_all, eps_schedule, dims = make_atari(config, game, len(run.seeds))
    state = jax.jit(jax.vmap(lambda k: init_state(config, network, k, envs.obs_shape)))(run.keys)
    # The learner state is restored exactly; the games restart (ale-py cannot save them).
    state = run.restore(state, note=" (Atari games restart from fresh episodes)")
    host = {"obs": envs.reset(seed=run.seeds[0] * config.num_envs + 7919 * (run.start_step // config.chunk)),
            "ep_return": np.zeros(envs.num_envs, np.float32), "last_return": np.zeros(envs.num_envs, np.float32)}
    make_chunk = atari_xla_chunk if config.atari_xla else atari_host_chunk
    chunk = make_chunk(config, envs, learn, act_all, eps_schedule, dims, host)
    eval_fn, eval_envs = atari_evaluator(config, game, network, run.seeds, run.evals_done)

    def evaluate(state):
        returns = eval_fn(state["train"].params)
        return returns, returns.mean(1)

    state = run.train(state, chunk, evaluate, "return")
    run.save_policy(state["train"].params, backend="atari")
    return run.finish(task=config.env, data_source="online", close=[envs, eval_envs])


if __name__ == "__main__":
    run_cli(main, Config)
