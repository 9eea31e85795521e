"""RAVL — Reach-Aware Value Learning (Sims, Lu & Teh, 2024, "The Edge-of-Reach Problem in Offline Model-Based
Reinforcement Learning"), offline, model-based.

Model-based offline RL trains on short rollouts (k = 5 steps) of a learned dynamics model that branch from dataset
states. The states reached only at a rollout's LAST step are never the start of a transition the critics train on:
their Q is only ever bootstrapped FROM, never corrected ("edge-of-reach" states), so overestimation there spreads
through the Bellman backups and the policy steers toward them. This happens even with a perfect model; RAVL's
remedy is to make the value estimate pessimistic where the critics lack data, which EDAC's Q-ensemble does: the
ensemble's members disagree at edge-of-reach states, and the minimum over the members in the target is low there.
No dynamics-uncertainty reward penalty (MOPO, MOBILE) is used.

  data     every epoch of `rollout_every` updates, `rollout_batch` rollouts of `rollout_length` steps from random
           dataset states with the current (stochastic) policy in the model (rlzoo.dynamics: 7 members, 5 elites,
           a random elite per step, trained once on the dataset by load_or_train and reused), into a FIFO rollout
           buffer of the last `rollout_retain_epochs` epochs; each batch of 256 is 5% dataset, 95% rollouts
  critics  N = 10 Q's regress on r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi(s'), plus
           eta times EDAC's diversity term: per sample, the cosine similarity of grad_a Q_i(s, a) and grad_a Q_j(s, a)
           summed over pairs i != j (both orders), averaged over the batch, divided by N - 1 (`diversity_loss`)
  actor    SAC: minimize E[alpha log pi(a|s) - min_i Q_i(s, a)], a ~ pi(s) (tanh-Gaussian); alpha tuned toward the
           entropy -|A| (loss -log(alpha) (log pi + target), as the authors' code), Polyak targets (tau 5e-3)
Each update: temperature, then actor, then critics (with the updated actor and alpha), then targets, the order of
the authors' code (github anyasims/edge-of-reach, adapted from CORL's EDAC); 3x256 MLPs, lr 3e-4, batch 256,
3000 epochs x 1000 updates. --eta 0 switches the diversity term off for the on/off comparison (it is still
logged, as `grad_similarity`, without a gradient).

The diagnostic the paper plots is logged with every epoch: from a sample of the rollout buffer, the ensemble's mean
Q(s', a'), a' ~ pi(s'), and its spread over the members, on edge-of-reach next states (the last step of a rollout
that did not terminate) and on the other non-terminal next states: `q_edge_of_reach` vs `q_in_reach`,
`q_std_edge_of_reach` vs `q_std_in_reach` (0 when the sample holds none, e.g. in_reach with --rollout-length 1).
The paper shows Q on edge-of-reach states growing far beyond the rest without RAVL's pessimism; compare e.g.
--num-critics 2 --eta 0 with the defaults (not yet measured with this implementation).

How it runs: all seeds vmapped, each with its own rollout buffer on the device (in the state, so checkpoints hold it
and --resume continues bit for bit; by default 1.25M rows, about 215 MB per seed for HalfCheetah, in memory and in
every checkpoint); the model is shared by the seeds. A chunk is one jitted lax.scan over
chunk / rollout_every epochs, each a rollout followed by a lax.scan of rollout_every updates, so --chunk must be a
multiple of --rollout-every (by default both are 1000: one epoch per chunk). That is cleaner than a rollout
wherever an epoch boundary falls inside a chunk: the latter needs a lax.cond on the step in the update loop, which
under the seed vmap turns into a select that runs the 50k-rollout branch at every update, and it lets an epoch
straddle two chunks; nested scans have no branch, and evaluations and checkpoints always fall between epochs.

Differences from the authors' code: rlzoo's networks (orthogonal init; log-std squashed smoothly into [-5, 2]
rather than EDAC's bias-0.1 / uniform-head init and a hard clip) and dynamics model (per-member log-variance
bounds); MBPO's termination functions (the authors' walker2d one lacks the |obs| < 100 bound); the shared offline
lifecycle's evaluation (deterministic tanh(mean) actions). As theirs: observations are not normalized and rewards
not scaled by default (--normalize-obs / --scale-rewards apply to the rollouts as to the data). The paper's
per-dataset settings are not tabulated here (TASKS is empty): every task starts from the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from rlzoo import buffers, dynamics, networks, offline
from rlzoo.cli import run_cli
from rlzoo.errors import RlzooError
from rlzoo.options import option

FIELDS = ("observations", "actions", "rewards", "next_observations", "dones")


@dataclass
class Config(dynamics.ModelOptions, offline.OfflineConfig):
    total_steps: int = option(3_000_000, ">= 1")
    """Gradient steps per seed (the paper: 3000 epochs x 1000 updates)."""
    chunk: int = option(1000, ">= 1")
    """Updates per compiled chunk; a multiple of rollout_every (each epoch's rollouts happen inside the chunk)."""
    num_critics: int = option(10, ">= 1")
    """Q-ensemble size N (10; the target takes the minimum over the members)."""
    eta: float = option(1.0, ">= 0")
    """Weight of EDAC's ensemble-diversity term in the critics' loss (1.0); 0 switches it off."""
    real_ratio: float = option(0.05, "[0, 1]")
    """Share of each batch drawn from the dataset, the rest from the rollout buffer (0.05: 12 of 256)."""
    rollout_length: int = option(5, ">= 1")
    """Model steps per rollout k (5)."""
    rollout_batch: int = option(50_000, ">= 1")
    """Rollouts branched from random dataset states at every epoch (50k)."""
    rollout_every: int = option(1000, ">= 1")
    """Updates per epoch: new rollouts are added before each epoch's updates (1000)."""
    rollout_retain_epochs: int = option(5, ">= 1")
    """The rollout buffer holds rollout_batch x rollout_length x this many transitions, FIFO (5 epochs)."""
    termination: str = "auto"
    """The rollouts' termination function: halfcheetah, hopper, walker2d, ant or never; auto: from --env's task."""
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
    init_alpha: float = option(1.0, "> 0")
    """Initial entropy temperature (log alpha starts at 0)."""
    autotune: bool = True
    """Tune alpha toward the target entropy -|A| (else alpha stays init_alpha)."""
    hidden_dims: tuple[int, ...] = option((256, 256, 256), ">= 1")
    """Hidden layers of the actor and of each critic (3x256)."""
    diagnostic_samples: int = option(10_000, ">= 1")
    """Rollout-buffer rows drawn after each epoch for the edge-of-reach Q diagnostic."""
    normalize_obs: bool = False
    """Normalize observations with the dataset's mean and std (+1e-3); the authors' code does not."""


def make_networks(config: Config, act_dim: int):
    """The actor, the critic ensemble, and the same ensemble with an action of its own per member (for the
    diversity term's per-member action gradients; same parameters)."""
    hidden = tuple(config.hidden_dims)
    actor = networks.TanhGaussianActor(act_dim, hidden)
    critic = networks.Ensemble(networks.Critic, config.num_critics, {"hidden_dims": hidden})
    per_member = networks.Ensemble(networks.Critic, config.num_critics, {"hidden_dims": hidden}, in_axes=(None, 0))
    return actor, critic, per_member


def rollout_capacity(config: Config) -> int:
    return config.rollout_batch * config.rollout_length * config.rollout_retain_epochs


def init_state(config: Config, key: jax.Array, obs_dim: int, act_dim: int) -> dict:
    """One seed's state: networks, optimizers, temperature, the (empty) rollout buffer, RNG."""
    actor, critic, _ = make_networks(config, act_dim)
    k_actor, k_critic, key = jax.random.split(key, 3)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    critic_params = critic.init(k_critic, obs, act)
    row = {"observations": jnp.zeros(obs_dim), "actions": jnp.zeros(act_dim), "rewards": jnp.float32(0),
           "next_observations": jnp.zeros(obs_dim), "dones": jnp.float32(0),
           "last": jnp.float32(0)}  # 1: the rollout's last step, whose next state is at the edge of reach
    return {
        "actor": TrainState.create(apply_fn=actor.apply, params=actor.init(k_actor, obs),
                                   tx=optax.adam(config.actor_lr)),
        "critic": TrainState.create(apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.critic_lr)),
        "target_params": jax.tree_util.tree_map(lambda x: x.copy(), critic_params),
        "log_alpha": TrainState.create(apply_fn=None, params={"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                       tx=optax.adam(config.alpha_lr)),
        "rollouts": buffers.replay_init(row, rollout_capacity(config)),
        "key": key,
    }


def diversity_loss(member_q, params, obs: jax.Array, act: jax.Array) -> jax.Array:
    """EDAC's ensemble-diversity term (An et al. 2021, as their code and the authors' compute it).

    member_q(params, obs [B, S], act [N, B, A]) -> Q [N, B], member i evaluated at act[i]. With g_i = grad_a Q_i(s, a)
    per sample, normalized to unit length (g / (|g| + 1e-10); a zero gradient stays zero, with a zero gradient of
    its norm), the term is mean over the batch of sum_{i != j} <g_i, g_j>, divided by N - 1: 0 when the members'
    action gradients are orthogonal, N when they all point the same way."""
    num = jax.tree_util.tree_leaves(params)[0].shape[0]  # the ensemble's parameters lead with the member axis
    act_n = jnp.broadcast_to(act, (num, *act.shape))
    grads = jax.grad(lambda a: member_q(params, obs, a).sum())(act_n)  # [N, B, A]: dQ_i(s_b, a_b) / da_b
    sq = jnp.sum(jnp.square(grads), axis=-1, keepdims=True)
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    unit = grads / (norm + 1e-10)
    cos = jnp.einsum("ibk,jbk->bij", unit, unit)  # [B, N, N]
    off_diagonal = (cos * (1.0 - jnp.eye(num, dtype=cos.dtype))).sum(axis=(1, 2))
    return off_diagonal.mean() / (num - 1)


def make_update(config: Config, act_dim: int):
    """One RAVL step (temperature, actor, critics, targets) on a mixed minibatch, for one seed."""
    _, _, per_member = make_networks(config, act_dim)
    target_entropy = -float(act_dim)
    scale = config.max_action

    def update(state: dict, batch: dict) -> tuple[dict, dict]:
        actor, critic, log_alpha = state["actor"], state["critic"], state["log_alpha"]
        key, k_alpha, k_pi, k_next = jax.random.split(state["key"], 4)
        obs, act = batch["observations"], batch["actions"]

        # Temperature: push the policy's entropy toward -|A| (the authors' loss on log alpha).
        _, logp = networks.sample_tanh_gaussian(k_alpha, *actor.apply_fn(actor.params, obs))
        alpha_loss = lambda p: -(p["log_alpha"] * jax.lax.stop_gradient(logp + target_entropy)).mean()
        a_loss, grads = jax.value_and_grad(alpha_loss)(log_alpha.params)
        if config.autotune:
            log_alpha = log_alpha.apply_gradients(grads=grads)
        alpha = jnp.exp(log_alpha.params["log_alpha"])

        # Actor: maximize the ensemble's minimum minus the entropy cost, through the reparameterized sample.
        def actor_loss(params):
            a, logp = networks.sample_tanh_gaussian(k_pi, *actor.apply_fn(params, obs))
            q = critic.apply_fn(critic.params, obs, scale * a)
            return (alpha * logp - q.min(0)).mean(), (-logp.mean(), q.std(0).mean())

        (pi_loss, (entropy, q_std)), grads = jax.value_and_grad(actor_loss, has_aux=True)(actor.params)
        actor = actor.apply_gradients(grads=grads)

        # Critics: soft Bellman target with the minimum over the target ensemble, plus eta x the diversity term.
        next_obs = batch["next_observations"]
        next_a, next_logp = networks.sample_tanh_gaussian(k_next, *actor.apply_fn(actor.params, next_obs))
        next_q = critic.apply_fn(state["target_params"], next_obs, scale * next_a).min(0) - alpha * next_logp
        target = jax.lax.stop_gradient(batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_q)

        def critic_loss(params):
            q = critic.apply_fn(params, obs, act)
            td = jnp.square(q - target).mean(1).sum()
            if config.eta > 0:
                similarity = diversity_loss(per_member.apply, params, obs, act)
                return td + config.eta * similarity, (td, similarity, q.mean())
            similarity = diversity_loss(per_member.apply, jax.lax.stop_gradient(params), obs, act)  # logged only
            return td, (td, similarity, q.mean())

        (_, (td, similarity, q_mean)), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
        critic = critic.apply_gradients(grads=grads)

        target_params = optax.incremental_update(critic.params, state["target_params"], config.tau)
        new_state = {**state, "actor": actor, "critic": critic, "target_params": target_params,
                     "log_alpha": log_alpha, "key": key}
        metrics = {"critic_loss": td, "grad_similarity": similarity, "actor_loss": pi_loss, "alpha_loss": a_loss,
                   "alpha": alpha, "entropy": entropy, "q_mean": q_mean, "q_std": q_std}
        return new_state, metrics

    return update


def check_config(config: Config) -> None:
    """Refuse inconsistent options, with what to change, before anything is built."""
    if config.chunk % config.rollout_every:
        raise RlzooError(f"--chunk {config.chunk} must be a multiple of --rollout-every {config.rollout_every}: a "
                         "chunk runs whole epochs (a rollout, then rollout-every updates), so that evaluations and "
                         "checkpoints fall between epochs. Change one of them (e.g. --chunk "
                         f"{config.rollout_every}).")
    if config.eta > 0 and config.num_critics < 2:
        raise RlzooError(f"--eta {config.eta} needs --num-critics 2 or more: the diversity term compares the "
                         "members' action gradients pairwise. Raise --num-critics, or pass --eta 0.")


def make_train(config: Config, dataset, model: dynamics.Dynamics | None = None):
    """`train_chunk(states, data)`: config.chunk // rollout_every epochs per seed in one jitted scan, seeds vmapped;
    each epoch adds model rollouts to the seed's buffer, then runs rollout_every updates on mixed batches. The
    dynamics model of `dataset` is loaded, or trained and saved, here (before the run directory exists), unless
    `model` is given (benchmarks.speed passes one)."""
    check_config(config)
    done_fn = dynamics.termination_for(config.termination, config.env, dataset.env_id)
    if model is None:
        model, _ = dynamics.load_or_train(dataset, dynamics.options_config(config), seed=config.dynamics_seed,
                                          progress=not config.quiet)
    obs_mean, obs_std, reward_scale = offline.data_transform(config, dataset)
    obs_mean, obs_std = jnp.asarray(obs_mean, jnp.float32), jnp.asarray(obs_std, jnp.float32)
    act_dim = dataset.actions.shape[1]
    actor, _, _ = make_networks(config, act_dim)
    update = make_update(config, act_dim)
    n_real = int(config.real_ratio * config.batch_size)
    n_model = config.batch_size - n_real
    names: list[str] = []  # the update's metric names, recorded when the scan's body is traced

    def add_rollouts(state: dict, data: dict, model) -> tuple[dict, jax.Array]:
        """rollout_batch rollouts from random dataset states with the current policy, their real steps into the
        buffer (observations normalized as the data, rewards scaled as the data)."""
        key, k_start, k_roll = jax.random.split(state["key"], 3)
        start = buffers.dataset_sample(data, k_start, config.rollout_batch)["observations"] * obs_std + obs_mean
        params = state["actor"].params

        def policy(obs, k):
            mean, log_std = actor.apply(params, (obs - obs_mean) / obs_std)
            return config.max_action * networks.sample_tanh_gaussian(k, mean, log_std)[0]

        out = dynamics.rollout(model, policy, start, k_roll, config.rollout_length, done_fn)  # [k, N, ...]
        rows = {"observations": (out["observations"] - obs_mean) / obs_std, "actions": out["actions"],
                "rewards": out["rewards"] * reward_scale,
                "next_observations": (out["next_observations"] - obs_mean) / obs_std, "dones": out["dones"],
                "last": (out["step"] == config.rollout_length - 1).astype(jnp.float32)}
        flat = lambda x: x.reshape(-1, *x.shape[2:])
        rollouts = buffers.replay_add(state["rollouts"], jax.tree_util.tree_map(flat, rows), flat(out["mask"]))
        real = out["mask"].astype(jnp.float32)
        stats = jnp.stack([real.sum(0).mean(), (out["rewards"] * real).sum() / real.sum()])
        return {**state, "rollouts": rollouts, "key": key}, stats

    def reach_diagnostic(state: dict) -> tuple[dict, jax.Array]:
        """The ensemble's mean Q(s', a') and spread over members, a' ~ pi(s'), on a sample of the buffer's next
        states: those at the edge of reach (a rollout's last step) vs the others (terminal ones left out)."""
        key, k_rows, k_act = jax.random.split(state["key"], 3)
        rows = buffers.replay_sample(state["rollouts"], k_rows, config.diagnostic_samples)
        next_obs = rows["next_observations"]
        a, _ = networks.sample_tanh_gaussian(k_act, *actor.apply(state["actor"].params, next_obs))
        q = state["critic"].apply_fn(state["critic"].params, next_obs, config.max_action * a)  # [N, M]
        alive = 1.0 - rows["dones"]
        edge, inside = rows["last"] * alive, (1.0 - rows["last"]) * alive
        mean_over = lambda x, w: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
        q_mean, q_std = q.mean(0), q.std(0)
        out = jnp.stack([mean_over(q_mean, edge), mean_over(q_mean, inside), mean_over(q_std, edge),
                         mean_over(q_std, inside)])
        return {**state, "key": key}, out

    def train_chunk(state: dict, data: dict, model) -> tuple[dict, dict]:
        def one(state, _):
            key, k_real, k_model = jax.random.split(state["key"], 3)
            real = buffers.dataset_sample(data, k_real, n_real)
            fake = buffers.replay_sample(state["rollouts"], k_model, n_model)
            batch = {k: jnp.concatenate([real[k], fake[k]]) for k in FIELDS}
            state, metrics = update({**state, "key": key}, batch)
            names[:] = list(metrics)
            # the scalar metrics leave the scan as one row per update (one write instead of one per metric)
            return state, jnp.stack([jnp.asarray(v, jnp.float32).reshape(()) for v in metrics.values()])

        def epoch(state, _):
            state, rollout_stats = add_rollouts(state, data, model)
            state, rows = jax.lax.scan(one, state, None, length=config.rollout_every, unroll=config.scan_unroll)
            state, reach = reach_diagnostic(state)
            return state, (rows, rollout_stats, reach)

        state, (rows, rollout_stats, reach) = jax.lax.scan(epoch, state, None,
                                                           length=config.chunk // config.rollout_every)
        rows = rows.reshape(-1, rows.shape[-1])
        metrics = {name: rows[:, i] for i, name in enumerate(names)}
        metrics.update(rollout_steps=rollout_stats[:, 0], rollout_reward=rollout_stats[:, 1],
                       q_edge_of_reach=reach[:, 0], q_in_reach=reach[:, 1], q_std_edge_of_reach=reach[:, 2],
                       q_std_in_reach=reach[:, 3])
        return state, metrics

    chunk = jax.jit(jax.vmap(train_chunk, in_axes=(0, None, None)), donate_argnums=0)
    return lambda states, data: chunk(states, data, model)


def make_policy(config: Config, act_dim: int):
    """Evaluation acts with the tanh of the Gaussian's mean, times the action bound."""
    actor, _, _ = make_networks(config, act_dim)
    return lambda params, obs: config.max_action * jnp.tanh(actor.apply(params, obs)[0])


def main(config: Config) -> dict:
    return offline.train(config, "ravl", init_state, make_train, make_policy, with_dataset=True)


if __name__ == "__main__":
    run_cli(main, Config)
