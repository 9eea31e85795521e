"""Pick a task's expert and medium behaviour policies from a finished SAC run (the D4RL recipe).

    python algorithms/sac.py --env Hopper-v5 --save-policy-every 10000 --run-dir ~/rlzoo-runs/sac-Hopper-v5-s0
    python -m envs.pick_policies --task hopper --run-dir ~/rlzoo-runs/sac-Hopper-v5-s0
    python -m envs.build_dataset hopper-expert hopper-medium hopper-medium-replay

(from the repository root).

expert: the run's final actor (policy.npz, after the full run, 1M steps by default).
medium: the snapshot (policies/step_*.npz) whose return is closest to one third of the expert's, both
measured here with sampled actions, as the datasets are collected (D4RL: "a policy trained to about a
third of the expert's performance"). Snapshots whose logged evaluation return is far from the target
are not re-evaluated.

Both actors are copied to envs/policies/<task>-{expert,medium}.npz, and envs/policies/policies.json
records the run's configuration, the steps, the measured returns and every evaluated candidate: the
medium-replay builder re-runs that training from the same configuration up to the medium step.
"""

from __future__ import annotations

import csv
import datetime
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from envs import recipes
from envs.behaviours import policy_behaviour
from envs.collect import collect, env_info
from envs.recipes import BUILD_COMMAND, POLICIES_JSON, policy_records
from envs.shared import rel, sha256
from rlzoo.cli import run_cli
from rlzoo.datasets import MUJOCO_ENVS
from rlzoo.errors import RlzooError, close_matches
from rlzoo.options import HOST_OPTIONS

# Run options that say how a run reports, not how it trains: not recorded as its configuration.
EVAL_SEED = 2_000_000  # env seeds of these evaluations: apart from the datasets' and the reference scores'


@dataclass
class Config:
    task: str
    """D4RL task name: halfcheetah, hopper, walker2d or ant."""
    run_dir: Path
    """A finished algorithms/sac.py run with --save-policy-every (holds policy.npz and policies/)."""
    episodes: int = 10
    """Episodes per evaluated policy (sampled actions)."""
    expert_episodes: int = 20
    """Episodes for the expert's return, the medium target's basis."""
    window: tuple[float, float] = (0.15, 0.6)
    """Only snapshots whose logged return is within this fraction of the expert's are evaluated."""
    force: bool = False
    """Overwrite existing envs/policies/<task>-*.npz files that differ."""
    medium_step: int = 0
    """If > 0, take this snapshot as the medium policy instead of the nearest to a third (it is evaluated
    and recorded like the others), e.g. to keep an earlier choice that is still about a third."""


def sampled_return(env_id: str, path: Path, obs_dim: int, act_dim: int, episodes: int) -> tuple[float, float]:
    behaviour = policy_behaviour(path, obs_dim, act_dim)
    got = collect(env_id, behaviour, seed=EVAL_SEED, num_envs=min(episodes, 10), episodes=episodes, record=False)
    return float(got.returns.mean()), float(got.returns.std())


def logged_returns(run_dir: Path, seed: int) -> dict[int, float]:
    """Mean-action evaluation returns the run logged (eval.csv) for `seed`, by step. Policies are read for the
    run's first seed (seed index 0 of the saved actors), so only its returns may judge them."""
    path = run_dir / "eval.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {int(r["step"]): float(r["score"]) for r in csv.DictReader(f) if int(r["seed"]) == seed}


def check_run(config: Config) -> tuple[str, dict]:
    if config.task not in MUJOCO_ENVS:
        matches = close_matches(config.task, list(MUJOCO_ENVS))
        raise RlzooError(f"unknown task '{config.task}'" + (f"; close matches: {', '.join(matches)}" if matches else "")
                         + f". Tasks: {', '.join(MUJOCO_ENVS)}.")
    env_id = MUJOCO_ENVS[config.task]
    run_dir = config.run_dir.expanduser()
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise RlzooError(f"{run_dir} is not an algorithms/sac.py run directory (no config.json)")
    sac_config = json.loads(cfg_path.read_text())
    if sac_config.get("env") != env_id:
        raise RlzooError(f"the run in {run_dir} trained on {sac_config.get('env')}, not {env_id} ({config.task})")
    if not (run_dir / "policy.npz").is_file() or not (run_dir / "summary.json").is_file():
        raise RlzooError(f"the run in {run_dir} has not finished (no policy.npz/summary.json): the expert is the "
                         f"fully trained actor. Continue it with `python algorithms/sac.py --resume {run_dir}`.")
    if not sac_config.get("save_policy_every"):
        raise RlzooError(f"the run in {run_dir} saved no intermediate actors (--save-policy-every 0), so there is "
                         "no medium candidate; train with --save-policy-every 10000")
    return env_id, {k: v for k, v in sac_config.items() if k not in HOST_OPTIONS}


def check_install(src: Path, dst: Path, force: bool) -> None:
    if dst.is_file() and sha256(dst) != sha256(src) and not force:
        raise RlzooError(f"{rel(dst)} exists and differs from {src}; pass --force to replace it (datasets and "
                         "reference scores built from the old one must then be rebuilt with --force --force-refs), "
                         "or keep the current medium policy with --medium-step <its step>")


def medium_candidates(config: Config, env_id: str, run_dir: Path, logged: dict, logged_final: float,
                      dims: tuple[int, int]) -> list[dict]:
    """The run's snapshots whose logged return is within `config.window` of the expert's (and the
    --medium-step one), each evaluated with sampled actions."""
    snapshots = sorted((int(re.findall(r"\d+", p.stem)[0]), p) for p in (run_dir / "policies").glob("step_*.npz"))
    lo, hi = config.window
    candidates = []
    for step, path in snapshots:
        outside = step in logged and not lo * logged_final <= logged[step] <= hi * logged_final
        if outside and step != config.medium_step:
            continue
        mean, std = sampled_return(env_id, path, *dims, config.episodes)
        candidates.append({"step": step, "return_sampled_mean": round(mean, 2), "return_sampled_std": round(std, 2),
                           "return_mean_action_logged": logged.get(step)})
        print(f"[pick_policies]   step {step:>8}: {mean:9.1f} +- {std:.1f}")
    if not candidates:
        raise RlzooError(f"no snapshot in {run_dir / 'policies'} has a logged return within {lo}-{hi} of the "
                         f"expert's ({logged_final:.1f}); widen --window")
    return candidates


def choose_medium(config: Config, run_dir: Path, candidates: list[dict], target: float) -> dict:
    """The candidate nearest to `target` (one third of the expert's return), or the --medium-step one."""
    best = min(candidates, key=lambda c: (abs(c["return_sampled_mean"] - target), c["step"]))
    if config.medium_step:
        chosen = [c for c in candidates if c["step"] == config.medium_step]
        if not chosen:
            raise RlzooError(f"--medium-step {config.medium_step}: no snapshot policies/step_{config.medium_step}.npz "
                             f"in {run_dir}")
        best = chosen[0]
    return best


def install(config: Config, run_dir: Path, medium_step: int) -> tuple[Path, Path]:
    """Copy the expert and medium actors to envs/policies/<task>-{expert,medium}.npz (refusing first, before
    anything is copied, to replace a differing file without --force)."""
    expert_file = recipes.POLICY_DIR / f"{config.task}-expert.npz"
    medium_file = recipes.POLICY_DIR / f"{config.task}-medium.npz"
    pairs = [(run_dir / "policy.npz", expert_file), (run_dir / "policies" / f"step_{medium_step}.npz", medium_file)]
    for src, dst in pairs:
        check_install(src, dst, config.force)
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return expert_file, medium_file


def main(config: Config) -> dict:
    env_id, sac_config = check_run(config)
    run_dir = config.run_dir.expanduser()
    dims = env_info(env_id)
    total = int(json.loads((run_dir / "summary.json").read_text())["steps"])
    expert_mean, expert_std = sampled_return(env_id, run_dir / "policy.npz", *dims, config.expert_episodes)
    target = expert_mean / 3.0
    print(f"[pick_policies] {config.task}: expert (step {total}) sampled return {expert_mean:.1f} +- {expert_std:.1f}"
          f" over {config.expert_episodes} episodes; medium target {target:.1f}")
    logged = logged_returns(run_dir, int(sac_config.get("seed", 0)))
    candidates = medium_candidates(config, env_id, run_dir, logged, logged.get(total, expert_mean), dims)
    best = choose_medium(config, run_dir, candidates, target)
    print(f"[pick_policies] {config.task}: medium = step {best['step']} ({best['return_sampled_mean']:.1f}, "
          f"{best['return_sampled_mean'] / expert_mean:.2f} of the expert's)")
    expert_file, medium_file = install(config, run_dir, best["step"])

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {"task": config.task, "env_id": env_id, "run": run_dir.name, "sac_config": sac_config,
              "return_episodes_env_seeds": f"{EVAL_SEED}+i, sampled actions", "picked_by": "envs/pick_policies.py",
              "date": date}
    records_path = recipes.POLICY_DIR / POLICIES_JSON
    records = policy_records(records_path)
    records[f"{config.task}-expert"] = {
        "file": rel(expert_file), "level": "expert", "step": total, "source": "policy.npz of the run",
        "return_sampled_mean": round(expert_mean, 2), "return_sampled_std": round(expert_std, 2),
        "return_episodes": config.expert_episodes, **common}
    records[f"{config.task}-medium"] = {
        "file": rel(medium_file), "level": "medium", "step": best["step"],
        "source": f"policies/step_{best['step']}.npz of the run", "return_sampled_mean": best["return_sampled_mean"],
        "return_sampled_std": best["return_sampled_std"], "return_episodes": config.episodes,
        "fraction_of_expert": round(best["return_sampled_mean"] / expert_mean, 3), "candidates": candidates, **common}
    records_path.write_text(json.dumps(dict(sorted(records.items())), indent=2) + "\n")
    print(f"[pick_policies] wrote {rel(expert_file)}, {rel(medium_file)} and {rel(records_path)}; now "
          f"build: {BUILD_COMMAND} {config.task}-expert {config.task}-medium "
          f"{config.task}-medium-replay {config.task}-random --force --force-refs")
    return records


if __name__ == "__main__":
    run_cli(main, Config)
