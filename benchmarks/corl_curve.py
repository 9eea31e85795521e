"""Cross-check an rlzoo offline algorithm against CORL's PyTorch file on the same data: losses, Q values and scores.

CORL (benchmarks/corl_baseline.md) is the reference rlzoo's offline algorithms follow. This trains CORL's
ContinuousCQL (its TrainConfig defaults) on an rlzoo dataset, logs the means of what its `train()` returns
every 1000 updates and CORL-style evaluations (deterministic tanh(mean) on normalized states, 10 episodes)
every 5000 (with a provenance file beside the CSV: CORL file hash, versions, machine, date), then draws both
runs side by side. Three steps, two environments (CORL needs torch, rlzoo JAX):

    python -m benchmarks.corl_curve export --dataset halfcheetah-medium-replay --out /tmp/corl/hcmr.npz
    /tmp/corl/venv/bin/python -m benchmarks.corl_curve train --corl-file /tmp/corl/corl_cql.py \\
        --data /tmp/corl/hcmr.npz --steps 20000 --out /tmp/corl/corl-cql-hcmr-s0.csv
    python -m benchmarks.corl_curve compare --rlzoo-run RUN_DIR --corl-csv /tmp/corl/corl-cql-hcmr-s0.csv \\
        --out results/sanity/cql-vs-corl-halfcheetah-medium-replay

`train` needs only torch, numpy and gymnasium[mujoco] (no rlzoo, no JAX); CORL's file is got as the
baseline page says (pinned commit, nothing of it committed here) and imported with stand-ins for the
packages its trainer does not use. The RUN_DIR is a plain `algorithms/cql.py` run on the same dataset.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np


def export(args) -> None:
    """The dataset's transitions (raw, unnormalized), its env id and reference scores, in one .npz."""
    from rlzoo import datasets

    d = datasets.load(args.dataset, download=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, observations=d.observations, actions=d.actions, rewards=d.rewards,
             next_observations=d.next_observations, terminals=d.terminals,
             ref=np.array([d.ref_min_score, d.ref_max_score]), env_id=np.array(d.env_id),
             source=np.array(f"{d.name} ({d.source}: {', '.join(d.dataset_ids)})"))
    print(f"{len(d)} transitions of {d.name} ({d.source}) -> {args.out}")


def load_corl(path: str):
    """CORL's file as a module; d4rl, gym, pyrallis and wandb (imported at its top, unused by the trainer)
    replaced by empty stand-ins while it loads, and sys.modules left as it was."""
    gym = types.ModuleType("gym")
    gym.Env = object  # appears in annotations only
    pyrallis = types.ModuleType("pyrallis")
    pyrallis.wrap = lambda *a, **k: (lambda f: f)
    stand_ins = {"d4rl": types.ModuleType("d4rl"), "wandb": types.ModuleType("wandb"), "gym": gym,
                 "pyrallis": pyrallis}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location("corl_cql", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                del sys.modules[name]
            else:
                sys.modules[name] = previous
    return module


CQL_KEYS = ("discount", "soft_target_update_rate", "alpha_multiplier", "use_automatic_entropy_tuning",
            "backup_entropy", "policy_lr", "qf_lr", "bc_steps", "target_update_period", "cql_n_actions",
            "cql_importance_sample", "cql_lagrange", "cql_target_action_gap", "cql_temp", "cql_alpha",
            "cql_max_target_backup", "cql_clip_diff_min", "cql_clip_diff_max")


def train(args) -> None:
    """CORL's ContinuousCQL built as its train() builds it, trained on the exported data, with CORL's state
    normalization (eps 1e-3) and evaluation; rows of means every 1000 updates into --out."""
    import gymnasium
    import torch

    torch.set_num_threads(args.threads)
    m = load_corl(args.corl_file)
    z = np.load(args.data)
    ref_min, ref_max = (float(x) for x in z["ref"])
    data = {k: z[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals")}
    mean, std = m.compute_mean_std(data["observations"], eps=1e-3)
    for k in ("observations", "next_observations"):
        data[k] = m.normalize_states(data[k], mean, std)
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    buffer = m.ReplayBuffer(obs_dim, act_dim, max(len(data["rewards"]), 1), "cpu")
    buffer.load_d4rl_dataset(data)
    m.set_seed(args.seed)
    config = m.TrainConfig(device="cpu")
    critic_1 = m.FullyConnectedQFunction(obs_dim, act_dim, config.orthogonal_init, config.q_n_hidden_layers)
    critic_2 = m.FullyConnectedQFunction(obs_dim, act_dim, config.orthogonal_init)  # as CORL builds it
    actor = m.TanhGaussianPolicy(obs_dim, act_dim, 1.0, log_std_multiplier=config.policy_log_std_multiplier,
                                 orthogonal_init=config.orthogonal_init)
    trainer = m.ContinuousCQL(
        critic_1=critic_1, critic_2=critic_2, actor=actor, device="cpu", target_entropy=-float(act_dim),
        critic_1_optimizer=torch.optim.Adam(list(critic_1.parameters()), config.qf_lr),
        critic_2_optimizer=torch.optim.Adam(list(critic_2.parameters()), config.qf_lr),
        actor_optimizer=torch.optim.Adam(actor.parameters(), config.policy_lr),
        **{k: getattr(config, k) for k in CQL_KEYS})
    env = gymnasium.make(str(z["env_id"]))

    def evaluate() -> float:
        actor.eval()
        returns = []
        for episode in range(args.eval_episodes):
            obs, _ = env.reset(seed=1000 * args.seed + episode)
            done, total = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(actor.act((obs - mean) / std, "cpu"))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        actor.train()
        return float(np.mean(returns))

    provenance = {  # rlzoo's provenance module needs JAX, which this environment lacks
        "corl_file_sha256": hashlib.sha256(Path(args.corl_file).read_bytes()).hexdigest(),
        "data": str(z["source"]), "seed": args.seed, "threads": args.threads, "steps": args.steps,
        "torch": torch.__version__, "numpy": np.__version__, "gymnasium": gymnasium.__version__,
        "python": platform.python_version(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")
    sums: dict[str, list[float]] = {}
    writer, t0 = None, time.time()
    with open(args.out, "w", newline="") as f:
        for step in range(1, args.steps + 1):
            for k, v in trainer.train(buffer.sample(args.batch_size)).items():
                sums.setdefault(k, []).append(float(v))
            if step % 1000:
                continue
            row = {"step": step, **{k: float(np.mean(v)) for k, v in sums.items()}, "wall_s": time.time() - t0,
                   "return_mean": "", "score": ""}
            if step % args.eval_every == 0:
                ret = evaluate()
                row.update(return_mean=ret, score=100 * (ret - ref_min) / (ref_max - ref_min))
            if writer is None:
                writer = csv.DictWriter(f, list(row))
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            sums = {}
            print(f"step {step}: Q1 {row['average_qf1']:.2f}, score {row['score']}, {row['wall_s']:.0f} s",
                  flush=True)


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def compare(args) -> None:
    """Copy both runs' files into --out and draw Q on the data, the conservative gap and the score per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, out = Path(args.rlzoo_run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "dataset.json", "train.csv", "eval.csv", "summary.json"):
        if (run / name).exists():
            shutil.copy(run / name, out / f"rlzoo-{name}")
    shutil.copy(args.corl_csv, out / "corl.csv")
    corl_provenance = Path(args.corl_csv).with_suffix(".json")  # written by `train` beside its CSV
    if corl_provenance.exists():
        shutil.copy(corl_provenance, out / "corl.json")
    ours_train, ours_eval, corl = read_csv(run / "train.csv"), read_csv(run / "eval.csv"), read_csv(args.corl_csv)
    col = lambda rows, k: (np.array([float(r["step"]) for r in rows if r.get(k) not in ("", None)]),
                           np.array([float(r[k]) for r in rows if r.get(k) not in ("", None)]))
    panels = [("Q(s, a_data), mean over the batch", (ours_train, "q_mean"), (corl, "average_qf1")),
              ("conservative gap logsumexp Q - Q_data", (ours_train, "cql_gap"), (corl, "cql_qf1_diff")),
              ("normalized score (10 episodes)", (ours_eval, "score"), (corl, "score"))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (title, (rows_a, key_a), (rows_b, key_b)) in zip(axes, panels):
        ax.plot(*col(rows_a, key_a), "o-", ms=3, label="rlzoo (JAX)")
        ax.plot(*col(rows_b, key_b), "s--", ms=3, label="CORL (PyTorch)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    config = json.loads((run / "config.json").read_text())
    corl_seed = json.loads(corl_provenance.read_text())["seed"] if corl_provenance.exists() else "?"
    fig.suptitle(f"CQL on {config.get('env', '?')} (locally built stand-in): rlzoo seed {config.get('seed', '?')} vs "
                 f"CORL seed {corl_seed}, same data and settings", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    print(f"wrote {out}/compare.png and the runs' files")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="dataset -> .npz (rlzoo's environment)")
    e.add_argument("--dataset", required=True)
    e.add_argument("--out", required=True)
    t = sub.add_parser("train", help="CORL's CQL on the .npz (torch environment)")
    t.add_argument("--corl-file", required=True, help="CORL's algorithms/offline/cql.py at the pinned commit")
    t.add_argument("--data", required=True)
    t.add_argument("--steps", type=int, default=20_000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--eval-every", type=int, default=5000)
    t.add_argument("--eval-episodes", type=int, default=10)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="both runs into one folder and one figure")
    c.add_argument("--rlzoo-run", required=True)
    c.add_argument("--corl-csv", required=True)
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    {"export": export, "train": train, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
