"""Greedy-return curves of the reference PQN (purejaxql, the paper's own code) on MinAtar, for comparing
rlzoo's PQN with it at the same step count and schedule on the same machine.

    PYTHONPATH=/tmp/pjq /tmp/pjq/venv/bin/python -m benchmarks.purejaxql_scores --purejaxql /tmp/pjq \
        --game Breakout-MinAtar --num-seeds 3 --total-steps 1064960 --decay-steps 9994240

The paper reports MinAtar only as curves, so its numbers at a shorter length cannot be quoted; this runs
its code instead. purejaxql is not part of rlzoo: get it and its throwaway venv as in
benchmarks/purejaxql_baseline.md, then run this module from the repository's root with that venv's python
and the folder holding the purejaxql package on PYTHONPATH (it imports rlzoo from this checkout only for
rlzoo.provenance, the commit and machine recorded; that import also turns XLA's CPU intra-op threading off,
as for rlzoo's own runs, before JAX starts its backend, and the summary records the flags). It loads
purejaxql's own MinAtar config, changes only the game, the length, the span of the lr and epsilon
schedules (TOTAL_TIMESTEPS_DECAY, the config's own switch for shorter runs), the seeds, and turns wandb
off; its greedy tests during training stay on at their default interval. The curve goes to
results/curves/purejaxql-pqn-<game>-s<seed>-n<seeds>-<steps>-decay<decay>.csv (columns of rlzoo's
eval.csv: step, seed, return_mean), which `python -m benchmarks.minatar collect` overlays. purejaxql splits one key,
PRNGKey(--seed), into its --num-seeds runs, so the seed column is the index of a run in that split, not a
seed that reproduces it alone. purejaxql's test
return is the mean over the episodes that 128 greedy envs finish within one episode's step limit,
rlzoo's the mean over 128 complete greedy episodes per seed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--purejaxql", required=True, help="directory that holds the purejaxql package")
    p.add_argument("--game", required=True)
    p.add_argument("--num-seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, required=True)
    p.add_argument("--decay-steps", type=int, required=True)
    p.add_argument("--purejaxql-commit", default="47af6d7", help="the purejaxql commit the code came from (recorded)")
    p.add_argument("--out", default=str(ROOT / "results" / "curves"))
    args = p.parse_args(argv)

    if importlib.util.find_spec("purejaxql") is None:  # the venv has it not installed: PYTHONPATH names it
        sys.exit(f"error: the purejaxql package is not importable. Run this from the repository's root as "
                 f"PYTHONPATH={args.purejaxql} <its venv>/bin/python -m benchmarks.purejaxql_scores ..., with "
                 "the folder that holds purejaxql/ on PYTHONPATH (benchmarks/purejaxql_baseline.md).")
    import jax
    import numpy as np
    from omegaconf import OmegaConf

    try:
        import wandb  # noqa: F401  (purejaxql imports it at the top)
    except ImportError:  # a machine without wandb, e.g. a lent GPU: with WANDB_MODE disabled it is never called
        sys.modules["wandb"] = types.ModuleType("wandb")
    from purejaxql import pqn_minatar

    from rlzoo import provenance  # commit and machine, recorded as every rlzoo result records them

    base = Path(args.purejaxql) / "purejaxql" / "config"
    config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(base / "config.yaml"),
                                                    {"alg": OmegaConf.load(base / "alg" / "pqn_minatar.yaml")}))
    config = {**config, **config["alg"]}
    config.update(ENV_NAME=args.game, TOTAL_TIMESTEPS=args.total_steps, TOTAL_TIMESTEPS_DECAY=args.decay_steps,
                  NUM_SEEDS=args.num_seeds, SEED=args.seed, WANDB_MODE="disabled", SAVE_PATH=None)

    commit = provenance.commit()  # before the run, so that a checkout changed meanwhile does not relabel it
    t0 = time.time()
    rngs = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)
    outs = jax.block_until_ready(jax.jit(jax.vmap(pqn_minatar.make_train(config)))(rngs))
    wall = time.time() - t0
    metrics = jax.tree_util.tree_map(np.asarray, outs["metrics"])
    interval = int(config["NUM_UPDATES"] * config["TEST_INTERVAL"])
    updates = metrics["update_steps"][0]  # (num_updates,), the same for every seed
    tested = np.flatnonzero(updates % interval == 0)  # the updates after which a new test ran

    name = f"purejaxql-pqn-{args.game}-s{args.seed}-n{args.num_seeds}-{args.total_steps}-decay{args.decay_steps}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "seed", "return_mean"])
        for i in tested:
            for s in range(args.num_seeds):
                writer.writerow([int(metrics["env_step"][s, i]), s,
                                 float(metrics["test/returned_episode_returns"][s, i])])
    final = metrics["test/returned_episode_returns"][:, tested[-1]]
    summary = {"game": args.game, "env_steps": int(metrics["env_step"][0, tested[-1]]),
               "final_greedy_return": [round(float(x), 3) for x in final], "wall_s_incl_compile": round(wall, 1),
               "purejaxql_config": {k: config[k] for k in ("TOTAL_TIMESTEPS", "TOTAL_TIMESTEPS_DECAY", "NUM_ENVS",
                                                          "NUM_STEPS", "LR", "EPS_DECAY", "TEST_INTERVAL")},
               "purejaxql_commit": args.purejaxql_commit, "key_split_from": f"PRNGKey({args.seed})"}
    info = provenance.info()
    summary.update(rlzoo_commit=commit, machine=info["device"], jax=info["jax"], jaxlib=info["jaxlib"],
                   python=info["python"], date=info["date"], cpu=provenance.cpu_signature(),
                   xla_flags=os.environ.get("XLA_FLAGS", ""))  # as the backend read them, rlzoo's import included
    (out / f"{name}-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
