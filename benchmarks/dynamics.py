"""How good is the dynamics ensemble? Its one-step holdout error and the compounding error of short open-loop
rollouts against the real MuJoCo environment from the same states (issue "model-based offline RL, part 1").

    python -m benchmarks.dynamics error --datasets hopper-medium-replay walker2d-medium-replay \\
        halfcheetah-medium-replay [--starts 500] [--horizon 5] [--record]

Each dataset's model is the one RAVL uses (`rlzoo.dynamics.load_or_train`, default hyperparameters, seed 0):
trained once on first use (minutes to an hour of CPU per dataset) and reused afterwards.
- holdout: the elites' mean prediction on the model's own holdout rows against the recorded s' and r.
- rollout k = 1..horizon: from `--starts` dataset states whose episode goes on for `horizon` more steps, the
  dataset's own actions are replayed open-loop in the real environment (its state set from the observation: the
  x position, which the observation leaves out, does not change the dynamics) and in the model, two ways: `sampled`
  (a random elite and a Gaussian sample per step, as the rollouts of RAVL and MBRCSL draw) and `mean` (the elites'
  mean). Errors compare the model's state after k steps with the real one's; `replay` is the real environment
  against the dataset's own next observations, a check of the state reconstruction (Hopper and Walker2d clip
  velocities at +-10 in their observations, so it is not exactly 0 there).
Errors: obs_mse (raw units), obs_nmse (each dimension divided by its variance in the dataset, then averaged; 1.0 is
as bad as predicting the dataset mean), reward_mse. Rows go to results/dynamics/model_error.csv and a plot of
obs_nmse over k to results/dynamics/model_error.png with --record; without it they are printed only.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.launch import ROOT
from rlzoo import datasets, dynamics
from rlzoo.cli import error_paragraph
from rlzoo.devices import configure_cpu
from rlzoo.errors import RlzooError
from rlzoo.provenance import info

COLUMNS = ["dataset", "data_source", "measure", "k", "mode", "obs_mse", "obs_nmse", "reward_mse", "n",
           "model_epochs", "elite_holdout_mse", "model_dir", "commit", "date", "device", "jax"]
OUT = ROOT / "results" / "dynamics"


def rollout_starts(data, horizon: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Rows i whose episode continues through row i + horizon - 1 (no end before the last of them)."""
    n = len(data)
    ended = (data.terminals > 0) | (data.timeouts > 0)
    joined = np.zeros(n, bool)
    joined[:-1] = np.all(np.isclose(data.next_observations[:-1], data.observations[1:], atol=1e-6), axis=1)
    ok = joined & ~ended  # row j continues into row j + 1
    valid = np.ones(n - horizon + 1, bool)
    for j in range(horizon - 1):
        valid &= ok[j: n - horizon + 1 + j]
    candidates = np.flatnonzero(valid)
    if len(candidates) == 0:
        raise RlzooError(f"no episode of '{data.name}' has {horizon} consecutive steps: lower --horizon.")
    return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))


def real_rollouts(env_id: str, data, starts: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """Replay the dataset's actions from each start state in the real environment: obs [H, N, D], rewards [H, N],
    alive [H, N] (False after the real episode ended)."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=0)
    sim = env.unwrapped
    nq, nv = sim.model.nq, sim.model.nv
    obs_dim = data.observations.shape[1]
    skip = {nq - 1 + nv: 1, nq + nv: 0}.get(obs_dim)  # qpos[1:] and qvel (locomotion), or all of qpos and qvel
    if skip is None:
        raise RlzooError(f"{env_id}'s observations ({obs_dim} numbers) are neither qpos[1:] and qvel ({nq - 1 + nv}) "
                         f"nor qpos and qvel ({nq + nv}): this benchmark sets the simulator's state from an "
                         "observation, which works for HalfCheetah, Hopper, Walker2d and the pendulums only.")
    n = len(starts)
    obs = np.zeros((horizon, n, obs_dim), np.float32)
    rew = np.zeros((horizon, n), np.float32)
    alive = np.zeros((horizon, n), bool)
    for i, row in enumerate(starts):
        o = data.observations[row]
        sim.set_state(np.concatenate([np.zeros(skip), o[: nq - skip]]), o[nq - skip:])
        for k in range(horizon):
            next_obs, r, terminated, truncated, _ = env.step(data.actions[row + k])
            obs[k, i], rew[k, i], alive[k, i] = next_obs, r, True
            if terminated:
                break
    env.close()
    return {"obs": obs, "rewards": rew, "alive": alive}


def elite_mean(model: dynamics.Dynamics, obs, action):
    """The elites' mean prediction of [s', r]."""
    return dynamics.predict(model, obs, action)[0][model.elites].mean(0)


@jax.jit
def _model_rollouts(model: dynamics.Dynamics, start_obs, actions, key):
    """Open-loop model rollouts of actions [H, N, A]: (sampled obs, sampled r, mean obs, mean r), each [H, N, ...];
    sampled as rlzoo.dynamics.rollout samples (a random elite per step and a Gaussian draw)."""
    elites = dynamics.elite_params(model)

    def step(carry, a):
        s_obs, m_obs, key = carry
        key, k_member, k_noise = jax.random.split(key, 3)
        s_next, s_r = dynamics.sample_step(model, elites, s_obs, a, k_member, k_noise)
        m_pred = elite_mean(model, m_obs, a)
        return (s_next, m_pred[:, :-1], key), (s_next, s_r, m_pred[:, :-1], m_pred[:, -1])

    _, out = jax.lax.scan(step, (start_obs, start_obs, key), actions)
    return out


def errors(pred_obs, true_obs, pred_r, true_r, mask, obs_var) -> dict[str, float]:
    m = mask.astype(np.float64)
    sq = (np.asarray(pred_obs, np.float64) - true_obs) ** 2
    count = max(m.sum(), 1.0)
    return {"obs_mse": float((sq.mean(-1) * m).sum() / count),
            "obs_nmse": float(((sq / obs_var).mean(-1) * m).sum() / count),
            "reward_mse": float((((np.asarray(pred_r, np.float64) - true_r) ** 2) * m).sum() / count),
            "n": int(m.sum())}


def model_error(name: str, starts: int, horizon: int, seed: int, max_epochs: int | None = None) -> list[dict]:
    data = datasets.load(name)
    config = dynamics.DynamicsConfig(max_epochs=max_epochs)
    model, record = dynamics.load_or_train(data, config, seed=0)
    obs_var = np.maximum(data.observations.astype(np.float64).var(0), 1e-8)
    base = {"dataset": name, "data_source": data.source, "model_epochs": record["epochs"],
            "elite_holdout_mse": round(record["elite_holdout_mse"], 6), "model_dir": Path(record["directory"]).name}
    rows = []

    _, hold = dynamics.holdout_split(len(data), config, record["seed"])
    mean = np.asarray(elite_mean(model, jnp.asarray(data.observations[hold]), jnp.asarray(data.actions[hold])))
    rows.append({**base, "measure": "holdout", "k": 1, "mode": "mean",
                 **errors(mean[:, :-1], data.next_observations[hold], mean[:, -1], data.rewards[hold],
                          np.ones(len(hold), bool), obs_var)})

    rng = np.random.default_rng(seed)
    idx = rollout_starts(data, horizon, starts, rng)
    real = real_rollouts(data.env_id, data, idx, horizon)
    acts = np.stack([data.actions[idx + k] for k in range(horizon)])
    s_obs, s_r, m_obs, m_r = (np.asarray(x) for x in _model_rollouts(
        model, jnp.asarray(data.observations[idx]), jnp.asarray(acts), jax.random.PRNGKey(seed)))
    for k in range(horizon):
        alive = real["alive"][k]
        for mode, po, pr in (("sampled", s_obs[k], s_r[k]), ("mean", m_obs[k], m_r[k])):
            rows.append({**base, "measure": "rollout", "k": k + 1, "mode": mode,
                         **errors(po, real["obs"][k], pr, real["rewards"][k], alive, obs_var)})
    rows.append({**base, "measure": "replay", "k": 1, "mode": "real env",
                 **errors(real["obs"][0], data.next_observations[idx], real["rewards"][0], data.rewards[idx],
                          real["alive"][0], obs_var)})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for mode in ("sampled", "mean"):
            pts = sorted((int(r["k"]), float(r["obs_nmse"])) for r in rows
                         if r["dataset"] == name and r["measure"] == "rollout" and r["mode"] == mode)
            ax.plot(*zip(*pts), marker="o", label=f"rollout, {mode}")
        hold = [float(r["obs_nmse"]) for r in rows if r["dataset"] == name and r["measure"] == "holdout"]
        ax.scatter([1], hold, marker="x", color="k", label="holdout, one step", zorder=3)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("model steps k")
    axes[0][0].set_ylabel("obs error / dataset variance")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["error"])
    p.add_argument("--datasets", nargs="+", required=True, help="dataset names, e.g. hopper-medium-replay")
    p.add_argument("--starts", type=int, default=500, help="dataset states the rollouts start from")
    p.add_argument("--horizon", type=int, default=5, help="model steps per rollout")
    p.add_argument("--seed", type=int, default=0, help="picks the start states and the model's samples")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="cap the model's training (default: early stopping only, the model RAVL uses)")
    p.add_argument("--record", action="store_true", help="write model_error.csv and .png into --out")
    p.add_argument("--out", default=str(OUT), help="where --record writes (default results/dynamics)")
    args = p.parse_args(argv)
    if args.starts < 1 or args.horizon < 1 or (args.max_epochs is not None and args.max_epochs < 1):
        raise RlzooError("--starts, --horizon and --max-epochs must be at least 1.")
    prov = info()
    rows = []
    for name in args.datasets:
        for r in model_error(name, args.starts, args.horizon, args.seed, args.max_epochs):
            rows.append({**r, **{k: prov[k] for k in ("commit", "date", "device", "jax")}})
            print(f"{name:28s} {r['measure']:8s} k={r['k']} {r['mode']:8s} obs_nmse {r['obs_nmse']:.4g} "
                  f"obs_mse {r['obs_mse']:.4g} reward_mse {r['reward_mse']:.4g} (n={r['n']})")
    if args.record:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "model_error.csv"
        old = []
        if path.exists():
            with path.open(newline="") as f:
                old = [r for r in csv.DictReader(f) if r["dataset"] not in set(args.datasets)]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(old + rows)
        plot(old + rows, out / "model_error.png")
        print(f"recorded in {path} and {out / 'model_error.png'}")


if __name__ == "__main__":
    configure_cpu()
    try:
        main(sys.argv[1:])
    except RlzooError as err:
        print(error_paragraph(err), file=sys.stderr)
        sys.exit(2)
