"""PQN score benchmark on the four MinAtar games (gymnax), seeds vmapped in one program per game.

    python -m benchmarks.minatar run --num-seeds 2 --total-steps 1064960     # what the 2-core CPU allows
    python -m benchmarks.minatar run --num-seeds 10                           # the paper's 1e7 steps (GPU)
    python -m benchmarks.minatar run --num-seeds 10 --total-steps 1064960 --value-head hl_gauss  # rlzoo.heads
    python -m benchmarks.minatar collect --num-seeds 10                       # curves of finished/partial runs
    python -m benchmarks.minatar collect --num-seeds 10 --tag gpu-h200 --from-results  # redraw from results/
    python -m benchmarks.minatar estimators --num-seeds 10                    # rlzoo's vs purejaxql's test return

`run` trains `algorithms/pqn.py` on each game in turn (one process per game, the paper's MinAtar
defaults, greedy evaluation on 128 envs per seed), resuming a game whose run directory already has a
checkpoint. The learning-rate and epsilon schedules span --decay-steps (default: the paper's full
length), so a shorter run is exactly the first part of a paper-length run and its curve can be read
against the paper's at the same step count. Each finished run is recorded once, after its process exits
(benchmarks/record_run.py: one row per seed in results/scores.csv, its curve files in
results/curves/pqn-<game>-<settings>/). `collect` (also run at
the end of `run`; give it the same settings) copies each game's eval.csv to
results/curves/pqn-<game>-<settings>.csv, plots all games into results/curves/pqn-minatar-<settings>.png
with the reference's curves of the same length and schedule where `python -m benchmarks.purejaxql_scores` wrote
them, and lists unfinished runs in results/curves/pqn-minatar-<settings>-in-progress.csv, where <settings> is
s<seed>-n<seeds>-<total steps>-decay<decay steps>[-obsdiv255][-<tag>]: runs of other settings are other runs, in other
folders and files (the first 3-seed runs, made before this naming, are pqn-<game>.csv and pqn-minatar.png).
`collect --from-results` redraws that figure from the pqn-<game>-<settings>.csv curves already in results/curves
(runs made on another machine, say, beside a reference curve added later): it copies nothing and leaves any
in-progress list as it is.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.launch import ROOT, algorithm_module, start_or_resume_command
from benchmarks.record_run import record

CURVES = ROOT / "results" / "curves"
SCORES = ROOT / "results" / "scores.csv"
GAMES = ["Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar"]
PAPER_STEPS = 9_994_240  # pqn.py's default total_steps: 1e7 rounded down to whole chunks


def run_dir(root: Path, game: str, args) -> Path:
    """Everything that changes the run is in its name: a paper-length 10-seed run is not mistaken for a short
    one that finished earlier."""
    return root / f"pqn-{game}-{settings(args)}"


def settings(args) -> str:
    head = getattr(args, "value_head", "mse")
    return f"s{args.seed}-n{args.num_seeds}-{args.total_steps}-decay{args.decay_steps}" + (
        "-obsdiv255" if args.obs_div_255 else "") + (f"-{head}" if head != "mse" else "") + (
        f"-{args.tag}" if args.tag else "")


def run(args) -> None:
    root = Path(args.runs_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for game in args.games:
        d = run_dir(root, game, args)
        if (d / "summary.json").exists():
            print(f"{game}: finished already ({d})")
            record(d, SCORES, CURVES)  # a no-op when it was recorded when it finished
            continue
        cmd = start_or_resume_command("pqn", d, [
            "--env", game, "--num-seeds", str(args.num_seeds), "--seed", str(args.seed),
            "--total-steps", str(args.total_steps), "--decay-steps", str(args.decay_steps),
            "--eval-every", str(args.eval_every), "--checkpoint-every", str(args.eval_every),
            *(["--minatar-obs-div-255"] if args.obs_div_255 else []),
            *(["--value-head", args.value_head] if args.value_head != "mse" else [])])
        cmd += ["--quiet"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        record(d, SCORES, CURVES)
    collect(args)


def seed_mean(data: np.ndarray) -> tuple[list[float], list[float]]:
    """The evaluation steps of a curve (columns step, seed, return_mean) and the mean return over seeds at each."""
    steps = sorted(set(data["step"]))
    return steps, [float(data["return_mean"][data["step"] == s].mean()) for s in steps]


def collect(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(args.runs_root).expanduser()
    CURVES.mkdir(parents=True, exist_ok=True)

    def curve(game: str) -> Path:
        """Where collect copies a game's eval.csv: results/curves/<run folder's name>.csv."""
        return CURVES / f"{run_dir(root, game, args).name}.csv"

    def source(game: str) -> Path:
        """A game's rlzoo curve: its run's eval.csv, or with --from-results the copy an earlier collect made."""
        return curve(game) if args.from_results else run_dir(root, game, args) / "eval.csv"

    games = [g for g in GAMES if source(g).exists()]
    if not games:
        print(f"no curves pqn-<game>-{settings(args)}.csv in {CURVES}" if args.from_results
              else f"no runs with these settings ({settings(args)}) under {root}")
        return
    fig, axes = plt.subplots(1, len(games), figsize=(max(4 * len(games), 6.5), 3.4), squeeze=False)
    unfinished = []
    for ax, game in zip(axes[0], games):
        d = run_dir(root, game, args)
        ax.set_title(game)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        if not args.from_results:
            shutil.copy(source(game), curve(game))
        data = np.atleast_1d(np.genfromtxt(source(game), delimiter=",", names=True))
        seeds = sorted(set(data["seed"].astype(int)))
        for s in seeds:
            sel = data["seed"] == s
            ax.plot(data["step"][sel], data["return_mean"][sel], alpha=0.35, lw=1)
        steps, mean = seed_mean(data)
        ax.plot(steps, mean, color="k", lw=2, label=f"rlzoo, mean of {len(seeds)} seeds")
        for ref in sorted(CURVES.glob(f"purejaxql-pqn-{game}-s*-n*-{args.total_steps}-decay{args.decay_steps}.csv")):
            r = np.atleast_1d(np.genfromtxt(ref, delimiter=",", names=True))
            n = len(set(r["seed"].astype(int)))
            ax.plot(*seed_mean(r), color="tab:red", lw=2 if n > 1 else 1.5, ls="--" if n > 1 else ":",
                    label=f"purejaxql, mean of {n} seeds" if n > 1 else "purejaxql, 1 seed")
        ax.legend(fontsize=8)
        if not args.from_results and not (d / "summary.json").exists():
            unfinished.append([game, int(max(steps)), round(float(mean[-1]), 3), len(seeds)])
    axes[0, 0].set_ylabel("greedy return (128 episodes per seed)")
    fig.suptitle("PQN on MinAtar (rlzoo, gymnax" + (", observations divided by 255" if args.obs_div_255 else "")
                 + (f", {args.value_head} value head" if getattr(args, "value_head", "mse") != "mse" else "")
                 + (f", {args.tag}" if args.tag else "") + ")")
    fig.tight_layout()
    fig.savefig(CURVES / f"pqn-minatar-{settings(args)}.png", dpi=110)
    plt.close(fig)
    if args.from_results:  # the runs' folders may be gone; what is unfinished is not known from the curves
        print(f"figure redrawn in {CURVES} from the curves there")
        return
    progress = CURVES / f"pqn-minatar-{settings(args)}-in-progress.csv"
    if unfinished:
        with progress.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["task", "steps_reached", "latest_mean_return", "seeds"])
            writer.writerows(unfinished)
    elif progress.exists():
        progress.unlink()
    print(f"curves in {CURVES}; unfinished: {unfinished or 'none'}")


def score_both_ways(network, game: str, params, keys, num_envs: int = 128) -> tuple[np.ndarray, ...]:
    """Per seed (params and keys carry a leading seed axis), on the same greedy episodes: the mean return of
    each env's first episode, the mean over every episode finished within one episode's step limit, that
    number of episodes, and how many first episodes did not end (none: gymnax truncates at the limit)."""
    import gymnax
    import jax
    import jax.numpy as jnp

    env, env_params = gymnax.make(game)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def one_seed(params, key):
        k_reset, k_run = jax.random.split(key)
        obs, state = reset(jax.random.split(k_reset, num_envs), env_params)

        def body(carry, k):
            obs, state, ret, first = carry
            action = jnp.argmax(network.apply(params, obs), axis=-1)
            obs, state, reward, done, _ = step(jax.random.split(k, num_envs), state, action, env_params)
            ret = ret + reward
            first = jnp.where(done & jnp.isnan(first), ret, first)
            return (obs, state, jnp.where(done, 0.0, ret), first), (done, jnp.where(done, ret, 0.0))

        init = (obs, state, jnp.zeros(num_envs), jnp.full(num_envs, jnp.nan))
        (_, _, _, first), (done, ended) = jax.lax.scan(
            body, init, jax.random.split(k_run, env_params.max_steps_in_episode))
        return jnp.nanmean(first), ended.sum() / done.sum(), done.sum(), jnp.isnan(first).sum()

    return tuple(map(np.asarray, jax.jit(jax.vmap(one_seed))(params, keys)))


def estimators(args) -> None:
    """Each game's final policy scored two ways on the same greedy episodes: rlzoo's test return (the first
    episode of each of 128 envs) and purejaxql's (every episode the 128 envs finish within one episode's step
    limit, envs resetting as they end). Short episodes recur in the second, so where returns grow with
    episode length it reads lower; this measures by how much. Writes
    results/curves/pqn-minatar-<settings>-test-estimators.csv, one row per game and seed."""
    import gymnax
    import jax

    from rlzoo import provenance
    from rlzoo.checkpoint import load_params

    pqn = algorithm_module("pqn")
    root = Path(args.runs_root).expanduser()
    num_envs = 128  # both implementations' test envs per seed
    rows = []
    for game in args.games:
        d = run_dir(root, game, args)
        if not (d / "summary.json").exists():
            print(f"{game}: no finished run in {d}")
            continue
        params, _ = load_params(d / "policy.npz")  # leaves [seeds, ...]
        network = pqn.make_network(gymnax.make(game)[0].num_actions, args.obs_div_255)
        num_seeds = len(jax.tree_util.tree_leaves(params)[0])
        keys = jax.random.split(jax.random.PRNGKey(args.seed + 12345), num_seeds)
        first, window, episodes, unfinished = score_both_ways(network, game, params, keys, num_envs)
        if unfinished.any():
            print(f"{game}: {unfinished.sum()} first episodes did not end within the step limit")
        for i in range(num_seeds):
            rows.append([game, i, round(float(first[i]), 3), round(float(window[i]), 3), int(episodes[i])])
        print(f"{game}: first episodes {first.mean():.2f}, all episodes in the window {window.mean():.2f} "
              f"({episodes.mean() / num_envs:.2f} per env), mean of {num_seeds} seeds")
    info = provenance.info()
    out = CURVES / f"pqn-minatar-{settings(args)}-test-estimators.csv"
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["game", "seed_index", "first_episode_mean", "window_episode_mean", "window_episodes",
                         "envs", "commit", "date", "device", "jax"])
        writer.writerows(r + [num_envs, info["commit"], info["date"], info["device"], info["jax"]] for r in rows)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["run", "collect", "estimators"])
    p.add_argument("--games", nargs="+", default=GAMES, choices=GAMES)
    p.add_argument("--num-seeds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, default=PAPER_STEPS, help="env steps per seed (multiple of 81920)")
    p.add_argument("--decay-steps", type=int, default=PAPER_STEPS, help="span of the lr and epsilon schedules")
    p.add_argument("--eval-every", type=int, default=163_840, help="env steps between evaluations/checkpoints")
    p.add_argument("--value-head", default="mse", choices=["mse", "two_hot", "hl_gauss"],
                   help="PQN's value head (rlzoo.heads, default support); not mse: -<head> in run and file names")
    p.add_argument("--runs-root", default="~/rlzoo-runs")
    p.add_argument("--tag", default="", help="appended to the settings in run and file names, e.g. the device "
                   "(gpu-h200) so that a GPU run of the same settings does not share a CPU run's folder or curve")
    p.add_argument("--obs-div-255", action="store_true",
                   help="divide the 0/1 observation planes by 255 as purejaxql does (runs named ...-obsdiv255)")
    p.add_argument("--from-results", action="store_true",
                   help="collect: redraw the figure from the curves already in results/curves (e.g. after a new "
                   "reference curve), for runs whose folders are on another machine")
    args = p.parse_args(argv)
    if args.from_results and args.mode != "collect":
        p.error("--from-results applies to collect only (run collects its own runs' curves)")
    {"run": run, "collect": collect, "estimators": estimators}[args.mode](args)


if __name__ == "__main__":
    main()
