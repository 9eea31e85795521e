"""The `pointmaze-stitch` dataset: two families of suboptimal PointMaze trajectories that only combine into the
optimal path (the stitching task of MBRCSL, Zhou et al. 2023), built with a scripted waypoint controller.

    python -m envs.build_dataset pointmaze-stitch            # build it (seconds); --force rebuilds
    python -m envs.pointmaze --picture envs/pointmaze-stitch.png   # redraw the maze with both families

Env `rlzoo/PointMaze-Stitch-v0` (rlzoo.pointmaze): start cell (1, 2), goal cell (2, 4), junction (2, 2), 200 steps,
dense reward exp(-distance). The controller is a PD law toward the next waypoint, a = clip(10 (w - p) - v, -1, 1)
(D4RL's maze2d gains), waypoints jittered by +-0.25 per episode as in the authors' data, plus N(0, 0.1) action
noise. Families, 500 episodes each:
- `direct`: start -> junction, then it stays at the junction. Short and fast, but it never heads for the goal.
- `detour`: start -> (1, 1) -> (2, 1) -> junction, rests there until step 120-139, then goes right along the
  corridor and stops a tenth of a cell right of cell (2, 3)'s centre, short of the goal's 0.45 radius. The long
  way round and the rest make it slow; only the first family's way down followed by this family's way right
  is the fast path, and neither family alone reaches the goal.
Reference scores: `ref_min_score` is a uniform-random policy's mean return, `ref_max_score` the controller's
noise-free shortest path (start -> junction -> goal, resting on the goal), each over 100 episodes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from envs.collect import Collected
from envs.shared import say
from rlzoo import pointmaze as pm
from rlzoo.datasets import build_command, datasets_root, local_id, normalize

ALIAS = "pointmaze-stitch"
DATASET_ID = local_id("pointmaze", "stitch")
EPISODES_PER_FAMILY = 500
SEED = 0
WAYPOINT_NOISE = 0.25
ACTION_NOISE = 0.1
REACHED = 0.3  # distance at which the controller moves on to the next waypoint
REST_UNTIL = (120, 140)  # the detour family leaves the junction at a step drawn from this range
STOP_SHIFT = np.array([0.1, 0.0])  # the detour family stops a tenth of a cell right of (2, 3)'s centre
FAMILIES = {
    "direct": [pm.JUNCTION_CELL],
    "detour": [(1, 1), (2, 1), pm.JUNCTION_CELL, (2, 3)],
}
REF_EPISODES = 100


def pd_action(obs: np.ndarray, waypoint: np.ndarray) -> np.ndarray:
    """The waypoint controller: a PD step toward `waypoint` from (x, y, vx, vy)."""
    return np.clip(10.0 * (waypoint - obs[:2]) - obs[2:], -1.0, 1.0)


@dataclass
class Episode:
    observations: np.ndarray  # [T + 1, 4]
    actions: np.ndarray  # [T, 2]
    rewards: np.ndarray  # [T]
    family: str


def run_episode(env, family: str | None, rng: np.random.Generator, seed: int) -> Episode:
    """One episode of `family` (None: the noise-free shortest path; "random": uniform actions)."""
    obs, _ = env.reset(seed=seed)
    if family == "random":
        waypoints, noise, rest = [], 0.0, 0
    elif family is None:
        waypoints, noise, rest = [pm.cell_xy(pm.JUNCTION_CELL), pm.goal_xy()], 0.0, 0
    else:
        cells = FAMILIES[family]
        waypoints = [pm.cell_xy(c) + rng.uniform(-WAYPOINT_NOISE, WAYPOINT_NOISE, 2) for c in cells]
        if family == "detour":
            waypoints[-1] += STOP_SHIFT
        noise = ACTION_NOISE
        rest = int(rng.integers(*REST_UNTIL)) if family == "detour" else 0
    junction = cells.index(pm.JUNCTION_CELL) if family == "detour" else None
    observations, actions, rewards, i = [obs], [], [], 0
    for t in range(pm.HORIZON):
        if family == "random":
            action = rng.uniform(-1.0, 1.0, 2)
        else:
            moved_on = np.linalg.norm(obs[:2] - waypoints[i]) < REACHED and i < len(waypoints) - 1
            if moved_on and not (i == junction and t < rest):
                i += 1
            action = np.clip(pd_action(obs, waypoints[i]) + noise * rng.standard_normal(2), -1.0, 1.0)
        obs, reward, _, _, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
    return Episode(np.asarray(observations, np.float32), np.asarray(actions, np.float32),
                   np.asarray(rewards, np.float64), family or "optimal")


def collect(episodes_per_family: int = EPISODES_PER_FAMILY, seed: int = SEED) -> list[Episode]:
    """Both families, alternating, env reset i seeded with seed + i."""
    import gymnasium as gym
    from tqdm import tqdm

    env = gym.make(pm.ENV_ID)
    rng = np.random.default_rng(seed)
    out = []
    for i in tqdm(range(2 * episodes_per_family), desc=ALIAS, unit="episode", mininterval=0.5):
        out.append(run_episode(env, ("direct", "detour")[i % 2], rng, seed + i))
    env.close()
    return out


def reference_scores(episodes: int = REF_EPISODES, seed: int = 10_000) -> tuple[float, float]:
    """(mean return of uniform-random actions, mean return of the noise-free shortest path), `episodes` each."""
    import gymnasium as gym

    env = gym.make(pm.ENV_ID)
    rng = np.random.default_rng(seed)
    low = np.mean([run_episode(env, "random", rng, seed + i).rewards.sum() for i in range(episodes)])
    high = np.mean([run_episode(env, None, rng, seed + i).rewards.sum() for i in range(episodes)])
    env.close()
    return float(low), float(high)


def reaches_goal(ep: Episode) -> bool:
    return bool(np.any(np.linalg.norm(ep.observations[:, :2] - pm.goal_xy(), axis=1) <= pm.GOAL_RADIUS))


def to_collected(episodes: list[Episode]) -> Collected:
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(seed=None, observations=e.observations, actions=e.actions, rewards=e.rewards,
                             terminations=np.zeros(len(e.rewards), bool),
                             truncations=np.arange(len(e.rewards)) == len(e.rewards) - 1) for e in episodes]
    returns = np.array([e.rewards.sum() for e in episodes])
    n = len(episodes)
    return Collected(buffers, returns, np.full(n, pm.HORIZON), np.zeros(n, bool), np.zeros(n, bool))


def build(force: bool = False, episodes_per_family: int = EPISODES_PER_FAMILY,
          ref_episodes: int = REF_EPISODES) -> dict | None:
    """Collect and write the dataset into the Minari store (skipped when on disk, unless `force`); other sizes
    than the recipe's are for tests."""
    from envs.store import write_dataset

    path = datasets_root() / DATASET_ID
    if (path / "data").is_dir() and not force:
        say(f"{ALIAS}: already built at {path} (--force rebuilds it)")
        return None
    t0 = time.time()
    episodes = collect(episodes_per_family)
    ref_min, ref_max = reference_scores(ref_episodes)
    collected = to_collected(episodes)
    returns = collected.returns
    record = {
        "dataset": ALIAS, "dataset_id": DATASET_ID, "env_id": pm.ENV_ID, "kind": "stitch", "seed": SEED,
        "episodes": len(episodes), "steps": int(sum(len(e.rewards) for e in episodes)),
        "families": {f: episodes_per_family for f in ("direct", "detour")},
        "return_mean": float(returns.mean()), "return_std": float(returns.std()), "return_max": float(returns.max()),
        "ref_min_score": ref_min, "ref_max_score": ref_max,
        "ref_min_source": f"uniform-random actions, mean of {ref_episodes} episodes",
        "ref_max_source": f"the controller's noise-free shortest path, mean of {ref_episodes} episodes",
        "build_command": build_command(ALIAS), "code": "envs/pointmaze.py",
        "collect_s": round(time.time() - t0, 1),
    }
    description = (f"LOCALLY BUILT stitching task in the spirit of MBRCSL's PointMaze: {len(episodes)} episodes of "
                   f"{pm.HORIZON} steps from a scripted waypoint controller, two families (start -> junction and "
                   f"stay; a detour that rests at the junction, then stops in the corridor short of the goal). "
                   f"ref_min_score: {record['ref_min_source']}; ref_max_score: {record['ref_max_source']}.")
    write_dataset(DATASET_ID, pm.ENV_ID, collected, ref_min=ref_min, ref_max=ref_max, description=description,
                  algorithm_name="scripted waypoint controller (envs/pointmaze.py)", record=record)
    norm = normalize(returns, ref_min, ref_max)
    say(f"{ALIAS}: wrote {DATASET_ID} ({len(episodes)} episodes, return {returns.mean():.1f} +- {returns.std():.1f}, "
        f"best {returns.max():.1f}; normalized mean {norm.mean():.1f}, best {norm.max():.1f}; refs {ref_min:.1f} / "
        f"{ref_max:.1f})")
    return record


def list_build(record: dict) -> None:
    """List the build in results/datasets.csv (--record)."""
    from envs import listing

    norm = float(normalize(record["return_mean"], record["ref_min_score"], record["ref_max_score"]))
    listing.upsert_row(listing.RESULTS_CSV, {**record, "source": "local", "policy": "envs/pointmaze.py (scripted)",
                                             "policy_sha256": "", "normalized_mean": norm})
    say(f"{ALIAS}: listed in {listing.RESULTS_CSV}")


def draw(path: str, episodes: list[Episode] | None = None, per_family: int = 25, extra=None) -> None:
    """The maze with `per_family` trajectories of each family (and `extra`: [(xy [T, 2], label, color)] on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = episodes if episodes is not None else collect(per_family)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r, row in enumerate(pm.MAZE):
        for c, wall in enumerate(row):
            if wall:
                x, y = pm.cell_xy((r, c))
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color="0.3"))
    colors = {"direct": "tab:blue", "detour": "tab:orange"}
    shown = {f: 0 for f in colors}
    for e in episodes:
        if e.family in shown and shown[e.family] < per_family:
            ax.plot(e.observations[:, 0], e.observations[:, 1], color=colors[e.family], alpha=0.35, lw=1,
                    label=e.family if shown[e.family] == 0 else None)
            shown[e.family] += 1
    for xy, label, color in extra or []:
        ax.plot(xy[:, 0], xy[:, 1], color=color, lw=2.5, label=label)
    for cell, name in ((pm.START_CELL, "start"), (pm.GOAL_CELL, "goal"), (pm.JUNCTION_CELL, "junction")):
        x, y = pm.cell_xy(cell)
        ax.annotate(name, (x, y + 0.3), ha="center", fontsize=9)
    ax.add_patch(plt.Circle(tuple(pm.goal_xy()), pm.GOAL_RADIUS, fill=False, color="tab:red", lw=1.5))
    ax.set_xlim(-3, 3)
    ax.set_ylim(-2, 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{ALIAS} (locally built): both families" + (" and model rollouts" if extra else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--picture", help="draw the maze with both families into this PNG")
    args = parser.parse_args()
    if args.picture:
        draw(args.picture)
    else:
        build()
