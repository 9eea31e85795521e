"""The training run every offline algorithm shares: a dataset name in, trained seeds and scores out.

An offline algorithm file supplies only its math: `init_state(config, key, obs_dim, act_dim)` (one
seed's state, with an `"actor"` TrainState and a `"key"`), `make_update(config)` -> `update(state,
batch)` for one seed, and `make_policy(config, act_dim)` -> `policy(actor_params, obs) -> action` on
normalized observations. `train` does the rest: resolve and load the dataset (naming a locally built
stand-in loudly), corrupt it if --corruption-target asks (rlzoo.corruption; evaluation stays in the clean env),
normalize observations and scale rewards as the config asks, put the data on the
device, vmap the seeds, sample minibatches inside one jitted scan per chunk, evaluate, log, checkpoint,
resume, and write the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from rlzoo import buffers, corruption, datasets, heads
from rlzoo.devices import shard_seeds
from rlzoo.errors import RlzooError
from rlzoo.evaluation import Evaluator
from rlzoo.options import RunConfig, option
from rlzoo.run import Run


@dataclass
class OfflineConfig(RunConfig, corruption.CorruptionOptions):
    """Options of every offline algorithm; algorithm files add their hyperparameters."""

    env: str = "halfcheetah-medium"
    """Dataset: a D4RL-style name (halfcheetah-medium, hopper-medium-replay, ...), a Minari id or a path."""
    total_steps: int = option(1_000_000, ">= 1")
    """Gradient steps per seed (1M in the papers)."""
    batch_size: int = option(256, ">= 1")
    """Minibatch size."""
    normalize_obs: bool = True
    """Normalize observations with the dataset's mean and std (+1e-3), in training and at evaluation."""
    obs_stats_with_next: bool = False
    """Compute the normalization's mean and std over observations and next observations together (RIQL's code)
    rather than over observations only (CORL); either way of the data trained on, corrupted or not."""
    scale_rewards: bool = False
    """Scale rewards by 1000 / (max - min return of complete episodes) of the dataset (IQL's MuJoCo setting)."""
    download: bool = True
    """Try to download the official Minari dataset when it is not on disk (fails fast offline)."""
    max_action: float = option(1.0, "> 0")
    """Action bound: the policy acts in [-max_action, max_action] (1.0 for every MuJoCo task; checked against the
    dataset's env)."""
    scan_unroll: int = option(1, ">= 1")
    """Updates per iteration of the chunk's compiled loop (lax.scan's unroll): on a GPU each iteration pays for
    loop control, so a small update can run faster unrolled; same math, longer compile."""


def make_train(update: Callable, config: OfflineConfig, batches_per_update: int = 1):
    """`train_chunk(states, data)`: `config.chunk` gradient steps per seed in one jitted scan, seeds vmapped.

    Each step samples a minibatch from the device-resident `data` with the seed's own key. With
    `batches_per_update = n > 1`, `update` receives n minibatches stacked on a leading axis and counts as n
    steps (TD3+BC's n critic steps per actor step); `config.chunk` must then be a multiple of n."""
    if config.chunk % batches_per_update:
        raise RlzooError(f"--chunk {config.chunk} must be a multiple of {batches_per_update} (the gradient steps "
                         "one update takes); change --chunk.")

    names: list[str] = []  # the update's metric names, in its order, recorded when the scan's body is traced

    def train_chunk(state: dict, data: dict) -> tuple[dict, dict]:
        def one(state, _):
            key, k_batch = jax.random.split(state["key"])
            batch = buffers.dataset_sample(data, k_batch, config.batch_size * batches_per_update)
            if batches_per_update > 1:
                batch = jax.tree_util.tree_map(
                    lambda x: x.reshape(batches_per_update, config.batch_size, *x.shape[1:]), batch)
            state, metrics = update({**state, "key": key}, batch)
            names[:] = list(metrics)
            # The scalar metrics go out as one row per update: one write into the scan's output instead of one
            # per metric, each of which is a kernel launch on a GPU.
            return state, jnp.stack([jnp.asarray(v, jnp.float32).reshape(()) for v in metrics.values()])

        state, rows = jax.lax.scan(one, state, None, length=config.chunk // batches_per_update,
                                   unroll=config.scan_unroll)
        return state, {name: rows[:, i] for i, name in enumerate(names)}

    return jax.jit(jax.vmap(train_chunk, in_axes=(0, None)), donate_argnums=0)


def load_dataset(config: OfflineConfig) -> datasets.OfflineDataset:
    """Load the dataset, check the config against it and corrupt it as --corruption-* asks (from the cache when
    it is there) before the run directory exists, so that bad input leaves nothing behind."""
    dataset = datasets.load(config.env, download=config.download)
    dataset.normalized_score(0.0)  # fails now, not at the first evaluation, if reference scores are missing
    env = gym.make(dataset.env_id)
    space = env.action_space
    env.close()
    bound = float(np.max(space.high))
    if not (np.allclose(space.high, bound) and np.allclose(space.low, -bound)):
        raise RlzooError(f"{dataset.env_id}'s action space [{space.low}, {space.high}] is not symmetric with one "
                         "bound; the offline actors act in [-max_action, max_action]. Rescale the actions (e.g. a "
                         "gymnasium RescaleAction wrapper) before building the dataset.")
    if not np.isclose(bound, config.max_action):
        raise RlzooError(f"--max-action {config.max_action} does not match {dataset.env_id}, whose actions are "
                         f"bounded by {bound:g}: run again with --max-action {bound:g}.")
    return corruption.corrupt(dataset, config, max_action=config.max_action, progress=not config.quiet)


def with_value_support(config: OfflineConfig, dataset: datasets.OfflineDataset) -> OfflineConfig:
    """`config` with a classification value head's unset --v-min / --v-max derived from the rewards it trains on
    (after --scale-rewards) and its discount (`heads.support_from_rewards`); other configs are returned as
    they are."""
    if getattr(config, "value_head", "mse") == "mse":
        return config
    rewards = dataset.rewards * (dataset.reward_scale() if config.scale_rewards else 1.0)
    return heads.with_support(config, (float(rewards.min()), float(rewards.max())))


def data_transform(config: OfflineConfig, dataset: datasets.OfflineDataset) -> tuple:
    """(obs_mean, obs_std, reward_scale) that turn the dataset into what the updates see: the normalization of
    --normalize-obs (0 and 1 without it) and the factor of --scale-rewards (1 without it)."""
    obs_mean, obs_std = (dataset.observation_stats(with_next=config.obs_stats_with_next) if config.normalize_obs
                         else (0.0, 1.0))
    return obs_mean, obs_std, dataset.reward_scale() if config.scale_rewards else 1.0


def train(config: OfflineConfig, algorithm: str, init_state: Callable, make_train: Callable,
          make_policy: Callable, with_dataset: bool = False, policy_params: Callable | None = None,
          with_return: bool = False) -> dict:
    """Run `algorithm` on `config.env` to `config.total_steps` (or resume it) and return the summary.

    `make_train(config)` returns the jitted `train_chunk` (usually via `rlzoo.offline.make_train`); with
    `with_dataset`, `make_train(config, dataset)` also gets the loaded (and corrupted) OfflineDataset, e.g. to
    train a dynamics model on it (model-based algorithms). `init_state(config, key, obs_dim=, act_dim=)` builds
    one seed's state; `make_policy(config, act_dim)` gives the evaluation policy on normalized observations.
    All three get the run's config (the saved one when resuming). `policy_params(state)` picks what the evaluation
    policy gets from one seed's state (default: the actor's parameters); with `with_return` the policy also gets
    the return its episode has collected so far, `policy(params, obs, ret)` (return-conditioned policies)."""
    def prepare(c):
        """Load the dataset and build the training program (which checks e.g. --chunk against the update)
        before the run directory exists."""
        dataset = load_dataset(c)
        c = with_value_support(c, dataset)
        return dataset, c, make_train(c, dataset) if with_dataset else make_train(c)

    run = Run.start(config, algorithm, prepare=prepare, complete=lambda c, prepared: prepared[1])
    config, (dataset, _, train_chunk) = run.config, run.prepared
    datasets.pin_to_run(dataset, run.run_dir, run.resuming)
    print(f"[rlzoo] {dataset.name}: {len(dataset):,} transitions, {len(dataset.episode_returns)} episodes, "
          f"source {dataset.source} ({', '.join(dataset.dataset_ids)}), evaluated on {dataset.env_id}")
    obs_mean, obs_std, reward_scale = data_transform(config, dataset)
    data = jax.device_put(dataset.transitions(obs_mean, obs_std, reward_scale))
    obs_dim, act_dim = dataset.observations.shape[1], dataset.actions.shape[1]

    state = run.restore(jax.vmap(partial(init_state, config, obs_dim=obs_dim, act_dim=act_dim))(run.keys))
    state, data = shard_seeds(state, data)

    act = make_policy(config, act_dim)
    mean_j, std_j = jnp.asarray(obs_mean, jnp.float32), jnp.asarray(obs_std, jnp.float32)
    policy = lambda params, obs, *ret: act(params, (obs - mean_j) / std_j, *ret)
    evaluator = Evaluator(dataset.env_id, policy, run.seeds, config.eval_episodes, evals_done=run.evals_done,
                          with_return=with_return)
    policy_params = policy_params or (lambda state: state["actor"].params)

    def evaluate(state):
        returns = evaluator(policy_params(state))
        return returns, dataset.normalized_score(returns).mean(1)

    run.train(state, lambda s: train_chunk(s, data), evaluate, "normalized score", extra_config=dataset.summary)
    return run.finish(task=config.env, data_source=dataset.source, close=[evaluator])
