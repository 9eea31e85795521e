"""stream-x benchmarks: speed against the authors' PyTorch code, returns of stream AC / Q, stream TD's error.

    python -m benchmarks.stream speed --reference-dir REF --reference-python REFPY [--record]
    python -m benchmarks.stream run --algo stream_ac --envs HalfCheetah-v5 Hopper-v5 --num-seeds 3 \
        --total-steps 500000 [--record]
    python -m benchmarks.stream reference --algo ac --env HalfCheetah-v5 --seeds 0 1 2 --total-steps 500000 \
        --reference-dir REF --reference-python REFPY [--record]
    python -m benchmarks.stream report

REF is a clone of github.com/mohmdelsayed/streaming-drl and REFPY a Python with torch, gymnasium[mujoco] and
minatar (benchmarks/README.md); benchmarks/stream_reference.py runs their scripts with the two Gymnasium 1.x fixes.

`speed` measures, in one invocation on the same machine, env steps/s after warm-up: ours for 1 and 8 seeds
(stream AC on HalfCheetah-v5: a host env step and one jitted update-and-act call per step; stream Q on
Breakout-MinAtar: chunks in one scan) and the reference's for one seed (from its episode rows, start-up
excluded); --record appends rows to results/speed.csv with the reference's figure as the baseline.
`run` trains (or resumes) one run per env with all seeds vmapped, in --runs-root; --record copies each finished
run into results/scores.csv and results/curves/. `reference` runs the authors' code per seed into
--runs-root/reference (and with --record into results/stream/reference/). `report` draws, per env, our curve
(mean +- std over seeds of each report's mean training return) beside the reference's (its episode returns
binned the same way) into results/stream/returns.png and the final returns into results/stream/returns.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.launch import ROOT, algorithm_module, start_or_resume_command
from benchmarks.record_run import record

RESULTS = ROOT / "results"
OUT = RESULTS / "stream"
REFERENCE_ENV = {"Breakout-MinAtar": "MinAtar/Breakout-v1", "Asterix-MinAtar": "MinAtar/Asterix-v1",
                 "Freeway-MinAtar": "MinAtar/Freeway-v1", "SpaceInvaders-MinAtar": "MinAtar/SpaceInvaders-v1"}
DEFAULT_ENVS = {"stream_ac": ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"],
                "stream_q": list(REFERENCE_ENV), "stream_td": ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"]}


# ---- speed --------------------------------------------------------------------------------------------------

def ours_stream_ac(env_id: str, num_seeds: int, steps: int) -> float:
    """Env steps/s over all seeds, as stream_ac.main steps them, after 300 warm-up steps."""
    import jax
    import jax.numpy as jnp

    from rlzoo.devices import seed_keys
    from rlzoo.envs import HostVectorEnv
    from rlzoo.stepping import PerStep, pack_host_step

    mod = algorithm_module("stream_ac")
    config = mod.Config(env=env_id, num_seeds=num_seeds)
    envs = HostVectorEnv(env_id, list(range(num_seeds)))
    init, step = mod.make_agent(config, envs.obs_dim, envs.act_dim)
    state = jax.jit(jax.vmap(init))(seed_keys(list(range(num_seeds))), jnp.asarray(envs.obs))
    step = PerStep(step, state)
    action, carry = np.asarray(state["action"]), step.enter(state)
    t0 = 0.0
    for i in range(300 + steps):
        if i == 300:
            t0 = time.perf_counter()
        carry, action = step(carry, pack_host_step(envs.step(action), envs))
        action = np.asarray(action)
    envs.close()
    return num_seeds * steps / (time.perf_counter() - t0)


def ours_stream_q(env_id: str, num_seeds: int, steps: int) -> float:
    """Env steps/s over all seeds of stream_q's jitted chunk (`steps` env steps per call), after a warm-up call."""
    import jax

    from rlzoo.devices import seed_keys

    mod = algorithm_module("stream_q")
    config = mod.Config(env=env_id, num_seeds=num_seeds, chunk=steps)
    _, init, train_chunk = mod.make_agent(config)
    state = jax.jit(jax.vmap(init))(seed_keys(list(range(num_seeds))))
    chunk = jax.jit(jax.vmap(train_chunk), donate_argnums=0)
    state, _ = chunk(state)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state, _ = chunk(state)
    jax.block_until_ready(state)
    return num_seeds * steps / (time.perf_counter() - t0)


def reference_command(args, algo: str, env: str, seed: int, total: int, out: Path, stop_after: int = 0) -> list[str]:
    return [args.reference_python, str(ROOT / "benchmarks" / "stream_reference.py"), "--reference-dir",
            str(args.reference_dir), "--algo", algo, "--env", env, "--seed", str(seed), "--total-steps", str(total),
            "--out", str(out)] + (["--stop-after", str(stop_after)] if stop_after else [])


def reference_speed(args, algo: str, env: str, steps: int, total: int) -> float:
    """The reference's env steps/s for one seed, between its first and last episode rows (start-up excluded)."""
    out = Path(args.scratch) / f"speed-{algo}.csv"
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(reference_command(args, algo, env, 0, total, out, stop_after=steps), check=True, env=env_vars,
                   stdout=subprocess.DEVNULL)
    rows = np.atleast_2d(np.loadtxt(out, delimiter=",", skiprows=1))
    return float((rows[-1, 0] - rows[0, 0]) / (rows[-1, 2] - rows[0, 2]))


def speed(args) -> list[dict]:
    from benchmarks.speed import append_row
    from rlzoo import provenance
    from rlzoo.devices import configure_cpu, synchronous_dispatch

    configure_cpu(None)
    synchronous_dispatch()  # as stream_ac.main runs
    import jax

    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    cases = [("stream_ac", "ac", "HalfCheetah-v5", "HalfCheetah-v5", ours_stream_ac, 2_000_000),
             ("stream_q", "q", "Breakout-MinAtar", "MinAtar/Breakout-v1", ours_stream_q, 5_000_000)]
    info, rows = provenance.info(), []
    for algorithm, ref_algo, env, ref_env, ours, total in cases:
        ref = reference_speed(args, ref_algo, ref_env, args.steps, total)
        for n in args.num_seeds:
            value = ours(env, n, args.steps)
            row = {"benchmark": "stream_env_steps", "algorithm": algorithm, "device": info["device"], "num_seeds": n,
                   "batch_size": 1, "unit": "env_steps/s", "value": f"{value:.1f}",
                   "baseline": f"streaming-drl-torch{args.reference_torch}-1thread-1seed={ref:.1f}",
                   "ratio_to_baseline": f"{value / ref:.2f}", "commit": provenance.commit(), "date": info["date"],
                   "jax": jax.__version__,
                   "notes": f"{env}; ours: {args.steps} env steps after warm-up, all {n} seeds (one env each); "
                            f"reference: the authors' code, one seed, {args.steps} steps, start-up excluded; "
                            f"load average at start {' '.join(f'{x:.2f}' for x in load)} on {os.cpu_count()} cores"}
            print(json.dumps(row))
            rows.append(row)
            if args.record:
                append_row(RESULTS / "speed.csv", row)
    return rows


# ---- returns ------------------------------------------------------------------------------------------------

def run_name(algo: str, env: str, args) -> str:
    return f"{algo}-{env}-s{args.seed}-n{args.num_seeds}-{args.total_steps}" + (f"-{args.tag}" if args.tag else "")


def run(args) -> None:
    root = Path(args.runs_root)
    for env in args.envs or DEFAULT_ENVS[args.algo]:
        run_dir = root / run_name(args.algo, env, args)
        if not (run_dir / "summary.json").exists():
            fresh = ["--env", env, "--seed", str(args.seed), "--num-seeds", str(args.num_seeds), "--total-steps",
                     str(args.total_steps), "--run-dir", str(run_dir), "--quiet", *args.extra]
            print(f"[stream] {args.algo} on {env}: {run_dir}", flush=True)
            subprocess.run(start_or_resume_command(args.algo, run_dir, fresh), check=True, cwd=ROOT)
        if args.record:
            record(run_dir, RESULTS / "scores.csv", RESULTS / "curves")


def reference(args) -> None:
    out_root = Path(args.runs_root) / "reference"
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref_env = REFERENCE_ENV.get(args.env, args.env)
    for seed in args.seeds:
        out = out_root / f"{args.algo}-{args.env}-s{seed}-{args.total_steps}.csv"
        done = out.with_suffix(".json")
        if not (done.exists() and json.loads(done.read_text()).get("complete")):
            print(f"[stream] reference {args.algo} on {ref_env}, seed {seed}: {out}", flush=True)
            subprocess.run(reference_command(args, args.algo, ref_env, seed, args.total_steps, out), check=True,
                           env=env_vars)
        if args.record:
            (OUT / "reference").mkdir(parents=True, exist_ok=True)
            for f in (out, done):
                shutil.copy(f, OUT / "reference" / f.name)


def binned(rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean return of the episodes ending in each (edges[i-1], edges[i]] window; NaN where none ended."""
    out = np.full(len(edges), np.nan)
    for i, hi in enumerate(edges):
        lo = edges[i - 1] if i else 0
        sel = (rows[:, 0] > lo) & (rows[:, 0] <= hi)
        if sel.any():
            out[i] = rows[sel, 1].mean()
    return out


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = sorted(p for p in (RESULTS / "curves").glob("stream_*") if (p / "eval.csv").exists())
    OUT.mkdir(parents=True, exist_ok=True)
    table, panels = [], []
    for folder in curves:
        summary = json.loads((folder / "summary.json").read_text())
        algo, env, steps = summary["algorithm"], summary["task"], summary["steps"]
        data = np.genfromtxt(folder / "eval.csv", delimiter=",", names=True)
        seeds = sorted(set(data["seed"].astype(int)))
        score = np.stack([data["score"][data["seed"] == s] for s in seeds])  # [seeds, reports]
        x = data["step"][data["seed"] == seeds[0]]
        last = max(1, len(x) // 10)  # the last 10% of the reports
        final = np.nanmean(score[:, -last:], axis=1)
        row = {"algorithm": algo, "task": env, "steps": steps, "seeds": len(seeds), "ours_mean": final.mean(),
               "ours_std": final.std(), "reference_mean": "", "reference_std": "", "reference_seeds": 0,
               "curve": folder.name}
        ref_files = sorted((OUT / "reference").glob(f"{'ac' if algo == 'stream_ac' else 'q'}-{env}-s*-{steps}.csv"))
        ref = None
        if ref_files and algo != "stream_td":
            ref = np.stack([binned(np.atleast_2d(np.loadtxt(f, delimiter=",", skiprows=1)), x) for f in ref_files])
            ref_final = np.nanmean(ref[:, -last:], axis=1)
            row.update(reference_mean=ref_final.mean(), reference_std=ref_final.std(), reference_seeds=len(ref_files))
        table.append(row)
        panels.append((f"{algo} {env}", x, score, ref))
    with (OUT / "returns.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(table[0]) if table else ["algorithm"])
        writer.writeheader()
        for row in table:
            writer.writerow({k: f"{v:.2f}" if isinstance(v, float) else v for k, v in row.items()})
    if not panels:
        print("no stream runs in results/curves yet")
        return
    cols = min(4, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(4 * cols, 3.2 * -(-len(panels) // cols)),
                             squeeze=False)
    for ax, (title, x, score, ref) in zip(axes.flat, panels):
        for label, y, color in (("rlzoo (JAX)", score, "C0"), ("authors' code (PyTorch)", ref, "C1")):
            if y is None:
                continue
            mean, std = np.nanmean(y, 0), np.nanstd(y, 0)
            ax.plot(x, mean, color=color, label=f"{label}, {len(y)} seeds")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel("MC RMSE" if title.startswith("stream_td") else "training return")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "returns.png", dpi=110)
    print(f"wrote {OUT / 'returns.csv'} and {OUT / 'returns.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "reference"):
        p = sub.add_parser(name)
        p.add_argument("--reference-dir", type=Path, required=True, help="a clone of mohmdelsayed/streaming-drl")
        p.add_argument("--reference-python", required=True, help="a Python with torch, gymnasium[mujoco], minatar")
        p.add_argument("--record", action="store_true")
    p = sub.choices["speed"]
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--num-seeds", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reference-torch", default="2.13", help="for the baseline's label")
    p.add_argument("--scratch", default=str(Path("/tmp") / "rlzoo-stream-speed"))
    p = sub.choices["reference"]
    p.add_argument("--algo", choices=["ac", "q"], required=True)
    p.add_argument("--env", required=True, help="HalfCheetah-v5, Breakout-MinAtar, ...")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--total-steps", type=int, default=500_000)
    p.add_argument("--runs-root", default="runs/stream")
    p = sub.add_parser("run")
    p.add_argument("--algo", choices=sorted(DEFAULT_ENVS), required=True)
    p.add_argument("--envs", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-seeds", type=int, default=3)
    p.add_argument("--total-steps", type=int, default=500_000)
    p.add_argument("--tag", default="")
    p.add_argument("--runs-root", default="runs/stream")
    p.add_argument("--record", action="store_true")
    p.add_argument("extra", nargs="*", help="more options for the algorithm, after --")
    sub.add_parser("report")
    args = parser.parse_args(argv)
    {"speed": speed, "run": run, "reference": reference, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
