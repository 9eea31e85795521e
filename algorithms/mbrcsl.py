"""MBRCSL — Model-Based Return-Conditioned Supervised Learning (Zhou, Liu, Zhang & Levine, 2023, "Free from Bellman
Completeness: Trajectory Stitching via Model-based Return-conditioned Supervised Learning"), offline, model-based.

Return-conditioned supervised learning (RCSL: a policy pi(a | s, return-to-go) fitted by regression to the data's
actions) needs no Bellman backups, but it can only reproduce trajectories that are in the data: conditioned on a
return higher than any episode's, it does not stitch the good first half of one trajectory to the good second half
of another. MBRCSL lets a dynamics model do the stitching: model rollouts of a behaviour policy from the data's
initial states cross from one trajectory family to another wherever they meet, and the best of them become RCSL's
training data.

  1 model      rlzoo.dynamics' ensemble (7 members, 5 elites, 4x200), trained once per dataset and reused (the same
               model RAVL loads)
  2 behaviour  pi_b(a | s), a mixture density network (K Gaussians over the action, `behaviour_components`), fitted
               by maximum likelihood to the dataset's (s, a); multimodal, as where two families part ways. The
               paper uses a diffusion policy on its PointMaze and an MLP elsewhere.
  3 rollouts   batches of `rollout_batch` rollouts from random initial states of the data's episodes, actions
               sampled from pi_b, a random elite per step, `rollout_length` steps (default: the env's time limit);
               keep the rollouts whose model return exceeds the best episode return in the data, until
               `rollouts_kept` are kept or `max_rollout_batches` batches are spent
  4 RCSL       MLP [1024, 1024] on (s, return-to-go / return_scale) -> max_action tanh(.), mean squared error to the
               actions, AdamW (lr 5e-5, weight decay 0.1), batch 256, on the kept rollouts (return-to-go: the
               undiscounted sum of the rollout's rewards from that step on)
  act          conditioned on the best kept rollout's return, counted down by the rewards received
--no-model runs plain RCSL (RvS-style) on the dataset's own episodes, conditioned on the data's best episode return:
the baseline the paper argues cannot stitch. return_scale is the data's best episode return (both variants).

How it runs: steps 1-3 happen before the run directory exists (in `make_train`), all seeds vmapped: each seed fits
its own behaviour policy and draws its own rollouts, and the host keeps a seed's rollouts above the threshold after
each call of `rollout_calls` batches. A resumed run repeats them, with the same keys, to the same rollouts (they are
cheap next to the model, which is reused from disk). The run's `total_steps` are RCSL's gradient steps (7000, about
the paper's 100 epochs over 90% of 100 rollouts of 200 steps), in chunks as every offline algorithm.
Differences from the authors' code: an MDN rather than a diffusion behaviour policy; no held-out 10% of the
rollouts (training runs its fixed number of steps); a seed with no rollout above the threshold stops the run with an
error naming the options to change, rather than training on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState
from tqdm import tqdm

from rlzoo import dynamics, networks, offline
from rlzoo.cli import run_cli
from rlzoo.errors import RlzooError
from rlzoo.options import option


@dataclass
class Config(dynamics.ModelOptions, offline.OfflineConfig):
    env: str = "pointmaze-stitch"
    """Dataset (the stitching task by default; any offline dataset works)."""
    total_steps: int = option(7000, ">= 1")
    """RCSL gradient steps per seed (about 100 epochs over the kept rollouts)."""
    eval_every: int = option(1000, ">= 1")
    """Evaluate every this many RCSL steps."""
    no_model: bool = False
    """Plain RCSL: train on the dataset's own episodes, no model, no behaviour policy, no rollouts."""
    hidden_dims: tuple[int, ...] = option((1024, 1024), ">= 1")
    """Hidden layers of the return-conditioned policy (1024x1024)."""
    lr: float = option(5e-5, "> 0")
    """AdamW learning rate of the return-conditioned policy."""
    weight_decay: float = option(0.1, ">= 0")
    """AdamW weight decay of the return-conditioned policy."""
    behaviour_components: int = option(5, ">= 1")
    """Gaussians in the behaviour policy's mixture."""
    behaviour_hidden_dims: tuple[int, ...] = option((256, 256), ">= 1")
    """Hidden layers of the behaviour policy."""
    behaviour_steps: int = option(10_000, ">= 1")
    """Gradient steps of the behaviour policy (batches of batch_size, Adam)."""
    behaviour_lr: float = option(1e-3, "> 0")
    """Adam learning rate of the behaviour policy."""
    rollout_batch: int = option(200, ">= 1")
    """Rollouts per batch, each from a random initial state of the data (200)."""
    rollout_calls: int = option(5, ">= 1")
    """Batches drawn per jitted call; the host filters after each call."""
    rollout_length: int | None = option(None, ">= 1")
    """Model steps per rollout (None: the env's time limit, 200 on the PointMaze task)."""
    rollouts_kept: int = option(100, ">= 1")
    """Rollouts above the data's best return to collect before RCSL training (100)."""
    max_rollout_batches: int = option(1000, ">= 1")
    """Give up after this many batches per seed (1000)."""
    termination: str = "auto"
    """The rollouts' termination function: halfcheetah, hopper, walker2d, ant, pointmaze or never; auto: from --env."""


# ---- the behaviour policy: a mixture density network ---------------------------------------------------------------

class MixturePolicy(nn.Module):
    """pi_b(a | s) = sum_k w_k(s) N(a; mu_k(s), diag sigma_k(s)^2): (logits [K], means [K, A], log-stds [K, A])."""

    act_dim: int
    components: int
    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, obs: jax.Array):
        h = networks.MLP(self.hidden_dims)(obs)
        k, a = self.components, self.act_dim
        logits = nn.Dense(k)(h)
        means = nn.Dense(k * a)(h).reshape(*obs.shape[:-1], k, a)
        log_std = jnp.clip(nn.Dense(k * a)(h).reshape(*obs.shape[:-1], k, a), -5.0, 2.0)
        return logits, means, log_std


def mixture_log_prob(logits, means, log_std, action):
    """log pi_b(action | s) of the mixture (logsumexp over the components)."""
    comp = networks.gaussian_log_prob(means, log_std, action[..., None, :])  # [..., K]
    return jax.nn.logsumexp(jax.nn.log_softmax(logits) + comp, axis=-1)


def mixture_sample(key, logits, means, log_std):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, logits)[..., None, None]
    mu = jnp.take_along_axis(means, comp, axis=-2)[..., 0, :]
    sd = jnp.exp(jnp.take_along_axis(log_std, comp, axis=-2)[..., 0, :])
    return mu + sd * jax.random.normal(k_noise, mu.shape)


def fit_behaviour(config: Config, key: jax.Array, obs: jax.Array, actions: jax.Array):
    """One seed's behaviour policy fitted by maximum likelihood; (params, final negative log-likelihood)."""
    net = MixturePolicy(actions.shape[1], config.behaviour_components, tuple(config.behaviour_hidden_dims))
    k_init, key = jax.random.split(key)
    state = TrainState.create(apply_fn=net.apply, params=net.init(k_init, obs[:1]),
                              tx=optax.adam(config.behaviour_lr))

    def step(carry, k):
        state = carry
        idx = jax.random.randint(k, (config.batch_size,), 0, obs.shape[0])
        nll = lambda p: -mixture_log_prob(*net.apply(p, obs[idx]), actions[idx]).mean()
        loss, grads = jax.value_and_grad(nll)(state.params)
        return state.apply_gradients(grads=grads), loss

    state, losses = jax.lax.scan(step, state, jax.random.split(key, config.behaviour_steps))
    return state.params, losses[-100:].mean()


# ---- rollouts and their filter --------------------------------------------------------------------------------------

def rollout_returns(out: dict) -> jax.Array:
    """Each rollout's model return: the sum of its real (unmasked) steps' rewards; out arrays are [H, N, ...]."""
    return jnp.sum(out["rewards"] * out["mask"], axis=0)


def keep_above(returns: np.ndarray, threshold: float, room: int) -> np.ndarray:
    """Indices of the rollouts whose return is strictly above `threshold`, in order, at most `room` of them."""
    return np.flatnonzero(np.asarray(returns) > threshold)[:max(room, 0)]


def returns_to_go(rewards: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[H, N] undiscounted return from each step on, over the real steps (masked steps count 0)."""
    r = np.asarray(rewards, np.float64) * mask
    return np.flip(np.cumsum(np.flip(r, 0), 0), 0)


def episode_starts(dataset) -> np.ndarray:
    """Row index of each episode's first transition."""
    return np.concatenate([[0], np.cumsum(dataset.episode_lengths)[:-1]]).astype(np.int64)


def data_returns_to_go(dataset) -> np.ndarray:
    """Per row, the undiscounted return of its episode from that row on."""
    episode = np.repeat(np.arange(len(dataset.episode_lengths)), dataset.episode_lengths)
    total = np.bincount(episode, weights=dataset.rewards.astype(np.float64))
    before = np.cumsum(dataset.rewards.astype(np.float64)) - dataset.rewards
    first = episode_starts(dataset)
    return total[episode] - (before - before[first][episode])


def horizon(config: Config, dataset) -> int:
    if config.rollout_length is not None:
        return config.rollout_length
    limit = gym.spec(dataset.env_id).max_episode_steps
    if limit is None:
        raise RlzooError(f"{dataset.env_id} has no time limit to take the rollout length from: pass --rollout-length.")
    return int(limit)


def collect_rollouts(config: Config, dataset, model: dynamics.Dynamics, seeds: list[int], progress: bool = True):
    """Steps 2-3 for every seed: fit its behaviour policy, roll out in the model, keep what beats the data.

    Returns per seed a dict of the kept rollouts (observations, actions, rewards, mask: [H, kept, ...]; returns:
    [kept]) in raw (unnormalized) units, with the batches drawn, the behaviour fit's final NLL and the best return
    any rollout reached."""
    obs_mean, obs_std, _ = offline.data_transform(config, dataset)
    obs_mean, obs_std = jnp.asarray(obs_mean, jnp.float32), jnp.asarray(obs_std, jnp.float32)
    data_obs = (jnp.asarray(dataset.observations) - obs_mean) / obs_std
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0xB0) for s in seeds])
    k_fit, k_roll = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys)
    fit = jax.vmap(lambda k, o, a: fit_behaviour(config, k, o, a), in_axes=(0, None, None))
    params, nll = jax.jit(fit)(k_fit, data_obs, jnp.asarray(dataset.actions))
    net = MixturePolicy(dataset.actions.shape[1], config.behaviour_components, tuple(config.behaviour_hidden_dims))
    starts = jnp.asarray(dataset.observations[episode_starts(dataset)])
    steps, done_fn = horizon(config, dataset), dynamics.termination_for(config.termination, config.env, dataset.env_id)
    n = config.rollout_batch * config.rollout_calls

    def one_seed(params, key):
        k_start, k_roll = jax.random.split(key)
        start = starts[jax.random.randint(k_start, (n,), 0, starts.shape[0])]
        policy = lambda obs, k: jnp.clip(mixture_sample(k, *net.apply(params, (obs - obs_mean) / obs_std)),
                                         -config.max_action, config.max_action)
        out = dynamics.rollout(model, policy, start, k_roll, steps, done_fn)
        return out, rollout_returns(out)

    draw = jax.jit(jax.vmap(one_seed))
    threshold = float(dataset.episode_returns.max())
    kept = [[] for _ in seeds]  # per seed: the kept parts of each call
    counts = np.zeros(len(seeds), int)
    batches = np.zeros(len(seeds), int)
    best = np.full(len(seeds), -np.inf)
    calls = -(-config.max_rollout_batches // config.rollout_calls)
    bar = tqdm(total=config.rollouts_kept * len(seeds), desc="mbrcsl rollouts kept", disable=not progress,
               unit="rollout", mininterval=0.5)
    for call in range(calls):
        todo = [i for i in range(len(seeds)) if counts[i] < config.rollouts_kept
                and batches[i] < config.max_rollout_batches]
        if not todo:
            break
        out, returns = draw(params, jax.vmap(jax.random.fold_in, in_axes=(0, None))(k_roll, call))
        returns = np.asarray(returns)
        for i in todo:
            batches[i] += config.rollout_calls
            best[i] = max(best[i], float(returns[i].max()))
            idx = keep_above(returns[i], threshold, config.rollouts_kept - counts[i])
            counts[i] += len(idx)
            if len(idx):
                pick = {k: np.asarray(out[k][i][:, idx]) for k in ("observations", "actions", "rewards", "mask")}
                kept[i].append({**pick, "returns": returns[i][idx]})
                bar.update(len(idx))
    bar.close()
    result = []
    for i, seed in enumerate(seeds):
        if not kept[i]:
            raise RlzooError(
                f"seed {seed}: none of {batches[i] * config.rollout_batch:,} model rollouts beat the data's best "
                f"episode return {threshold:.2f} (the best reached {best[i]:.2f}), so MBRCSL has nothing to train on. "
                "Draw more (--max-rollout-batches), fit the behaviour policy longer (--behaviour-steps), or check "
                "the dynamics model (python -m benchmarks.dynamics error); --no-model trains plain RCSL on the data.")
        cat = {k: np.concatenate([p[k] for p in kept[i]], axis=1 if k != "returns" else 0)
               for k in ("observations", "actions", "rewards", "mask", "returns")}
        result.append({**cat, "batches": int(batches[i]), "behaviour_nll": float(nll[i]),
                       "best_model_return": float(best[i])})
    return result


# ---- the return-conditioned policy ----------------------------------------------------------------------------------

def make_networks(config: Config, act_dim: int):
    return networks.DeterministicActor(act_dim, tuple(config.hidden_dims), config.max_action)


def init_state(config: Config, key: jax.Array, obs_dim: int, act_dim: int) -> dict:
    k_actor, key = jax.random.split(key)
    policy = make_networks(config, act_dim)
    params = policy.init(k_actor, jnp.zeros((1, obs_dim + 1)))
    actor = TrainState.create(apply_fn=policy.apply, params=params,
                              tx=optax.adamw(config.lr, weight_decay=config.weight_decay))
    # condition = (the return the policy is conditioned on at evaluation, return_scale); set by the first chunk
    return {"actor": actor, "condition": jnp.ones((2,), jnp.float32), "key": key}


def make_update(config: Config):
    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        x = jnp.concatenate([batch["observations"], batch["rtg"][:, None]], axis=-1)

        def loss_fn(params):
            return jnp.mean(jnp.sum((state["actor"].apply_fn(params, x) - batch["actions"]) ** 2, axis=-1))

        loss, grads = jax.value_and_grad(loss_fn)(state["actor"].params)
        return {**state, "actor": state["actor"].apply_gradients(grads=grads)}, {"rcsl_loss": loss}

    return update


def rcsl_data(config: Config, dataset, seeds: list[int], model: dynamics.Dynamics | None = None):
    """Per seed: the rows RCSL trains on (normalized observations, actions, return-to-go / return_scale), their
    count, the condition (target return, return_scale) and what the rollouts logged. Rows are padded to the
    largest seed's count; a seed samples only its own rows."""
    obs_mean, obs_std, _ = offline.data_transform(config, dataset)
    scale = max(float(np.abs(dataset.episode_returns).max()), 1e-6)
    if config.no_model:
        rows = {"observations": (dataset.observations - obs_mean) / obs_std, "actions": dataset.actions,
                "rtg": data_returns_to_go(dataset) / scale}
        target = float(dataset.episode_returns.max())
        per_seed = [(rows, target, {})] * len(seeds)
    else:
        if model is None:
            model, _ = dynamics.load_or_train(dataset, dynamics.options_config(config), seed=config.dynamics_seed,
                                              progress=not config.quiet)
        per_seed = []
        for r in collect_rollouts(config, dataset, model, seeds, progress=not config.quiet):
            m = r["mask"].reshape(-1)
            rtg = returns_to_go(r["rewards"], r["mask"])
            obs, act = (r[k].reshape(-1, r[k].shape[-1])[m] for k in ("observations", "actions"))
            rows = {"observations": (obs - obs_mean) / obs_std, "actions": act, "rtg": rtg.reshape(-1)[m] / scale}
            log = {"rollouts_kept": len(r["returns"]), "rollout_batches": r["batches"],
                   "kept_return_mean": float(r["returns"].mean()), "behaviour_nll": r["behaviour_nll"]}
            per_seed.append((rows, float(r["returns"].max()), log))
    size = max(len(rows["rtg"]) for rows, _, _ in per_seed)
    pad = lambda x: np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])
    data = {k: np.stack([pad(np.asarray(rows[k], np.float32)) for rows, _, _ in per_seed]) for k in per_seed[0][0]}
    data["count"] = np.array([len(rows["rtg"]) for rows, _, _ in per_seed], np.int32)
    condition = np.array([[target, scale] for _, target, _ in per_seed], np.float32)
    return data, condition, [log for _, _, log in per_seed]


def make_train(config: Config, dataset, model: dynamics.Dynamics | None = None):
    """`train_chunk(states, data)`: `chunk` RCSL steps per seed on that seed's rows (kept rollouts, or the data with
    --no-model) in one jitted scan, seeds vmapped. The rows are built here, before the run directory exists."""
    if config.scale_rewards:
        raise RlzooError("--scale-rewards does not apply to MBRCSL: returns-to-go are in the data's own reward units "
                         "(divided by the data's best return). Drop the flag.")
    seeds = list(range(config.seed, config.seed + config.num_seeds))
    data, condition, logs = rcsl_data(config, dataset, seeds, model)
    for seed, log in zip(seeds, logs):
        if log:
            print(f"[mbrcsl] seed {seed}: kept {log['rollouts_kept']} rollouts of {log['rollout_batches']} batches x "
                  f"{config.rollout_batch} (mean kept return {log['kept_return_mean']:.2f} vs the data's best "
                  f"{dataset.episode_returns.max():.2f}); conditioned on {condition[seeds.index(seed), 0]:.2f}")
    update = make_update(config)
    fields = ("observations", "actions", "rtg")

    def train_chunk(state: dict, rows: dict, condition) -> tuple[dict, dict]:
        def one(state, _):
            key, k_batch = jax.random.split(state["key"])
            idx = jax.random.randint(k_batch, (config.batch_size,), 0, rows["count"])
            state, metrics = update({**state, "key": key}, {k: rows[k][idx] for k in fields})
            return state, metrics["rcsl_loss"]

        state, loss = jax.lax.scan(one, {**state, "condition": condition}, None, length=config.chunk,
                                   unroll=config.scan_unroll)
        return state, {"rcsl_loss": loss}

    chunk = jax.jit(jax.vmap(train_chunk), donate_argnums=0)
    rows_d, cond_d = jax.device_put(data), jax.device_put(condition)

    def run_chunk(states, _data):
        return chunk(states, rows_d, cond_d)

    return run_chunk


def make_policy(config: Config, act_dim: int):
    """Acts on (s, (target - return so far) / return_scale); `params` = (network parameters, condition)."""
    policy = make_networks(config, act_dim)

    def act(params, obs, ret):
        net, (target, scale) = params
        rtg = (target - ret) / scale
        return policy.apply(net, jnp.concatenate([obs, rtg[..., None]], axis=-1))

    return act


def main(config: Config) -> dict:
    return offline.train(config, "mbrcsl", init_state, make_train, make_policy, with_dataset=True,
                         policy_params=lambda state: (state["actor"].params, state["condition"]), with_return=True)


if __name__ == "__main__":
    run_cli(main, Config)
