"""PointMaze-Stitch: gymnasium-robotics' PointMaze in the MBRCSL paper's stitching maze, as a plain Gymnasium env.

The maze (1 = wall) is the one of Zhou et al.'s code; the ball starts near cell (1, 2) and the goal is the centre of
cell (2, 4). The shortest path goes down to the junction cell (2, 2) and then right along the corridor. Reward is
PointMaze's dense reward, exp(-distance to the goal), every step; the task never terminates (the ball may rest on
the goal) and is cut at 200 steps. The observation is the ball's (x, y, vx, vy): the goal is fixed, so the goal
entries of PointMaze's dict observation are dropped. `gymnasium_robotics` is imported when the env is made, so
that registering the id costs nothing.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "rlzoo/PointMaze-Stitch-v0"
MAZE = [[1, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 1],
        [1, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1]]
START_CELL = (1, 2)
GOAL_CELL = (2, 4)
JUNCTION_CELL = (2, 2)
HORIZON = 200
GOAL_RADIUS = 0.45  # PointMaze's success radius


def cell_xy(cell: tuple[int, int]) -> np.ndarray:
    """Centre (x, y) of maze cell (row, col), as gymnasium-robotics places it (unit cells, maze centred at 0)."""
    rows, cols = len(MAZE), len(MAZE[0])
    return np.array([cell[1] + 0.5 - cols / 2, rows / 2 - (cell[0] + 0.5)])


def goal_xy() -> np.ndarray:
    return cell_xy(GOAL_CELL)


class PointMazeStitch(gym.Env):
    """PointMaze with MBRCSL's maze, a fixed start cell and goal, a flat observation and dense reward."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100}

    def __init__(self, render_mode: str | None = None):
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # its import prints a notice about its Adroit envs
            from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

        # continuing_task with reset_target off: the episode never ends at the goal and the goal never moves.
        self.maze_env = PointMazeEnv(maze_map=MAZE, render_mode=render_mode, reward_type="dense",
                                     continuing_task=True, reset_target=False)  # start noise: its default +-0.25
        self.render_mode = render_mode
        self.action_space = self.maze_env.action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.maze_env.reset(seed=seed, options={"reset_cell": np.array(START_CELL),
                                                            "goal_cell": np.array(GOAL_CELL)})
        self.maze_env.goal = goal_xy()  # PointMaze adds its position noise to the goal too: keep it fixed
        self.maze_env.update_target_site_pos()
        return obs["observation"].copy(), {"success": bool(np.linalg.norm(obs["achieved_goal"] - goal_xy())
                                                           <= GOAL_RADIUS)}

    def step(self, action):
        obs, reward, _, _, info = self.maze_env.step(np.asarray(action, np.float64))
        return obs["observation"].copy(), float(reward), False, False, {"success": info["success"]}

    def render(self):
        return self.maze_env.render()

    def close(self):
        self.maze_env.close()


def register() -> None:
    """Register ENV_ID with Gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="rlzoo.pointmaze:PointMazeStitch", max_episode_steps=HORIZON)


register()
