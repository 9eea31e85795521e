"""Gymnasium envs on the host: env-id checks, and one env per seed stepped as a batch (`HostVectorEnv`).

`HostVectorEnv` handles episode ends itself (the transition keeps the true final observation and the
termination flag; time-limit truncations are not terminal) and can save and restore its complete
state, MuJoCo physics and RNGs included, so that an interrupted online run resumes exactly.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from rlzoo import pointmaze  # noqa: F401  (registers rlzoo/PointMaze-Stitch-v0)
from rlzoo.errors import RlzooError, close_matches


def _quiet_mujoco_deprecation() -> None:
    """MuJoCo 4 warns (to stdout and MUJOCO_LOG.TXT) that Gymnasium's HalfCheetah/Ant XML uses the deprecated
    'settotalmass' attribute, once per env created: hundreds of lines per run. Drop that one message and
    route every other MuJoCo warning through Python's warnings module."""
    try:
        import mujoco
    except ImportError:
        return
    import warnings

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)


_quiet_mujoco_deprecation()


def check_env_id(env_id: str) -> None:
    """Raise a readable RlzooError, with close matches, when `env_id` is not a registered Gymnasium env."""
    if env_id in gym.registry:
        return
    matches = close_matches(env_id, [k for k in gym.registry if "/" not in k or k.startswith("ALE/")])
    raise RlzooError(
        f"unknown environment '{env_id}'. "
        + (f"Close matches: {', '.join(matches)}. " if matches else "")
        + "Online algorithms take a Gymnasium id such as HalfCheetah-v5, Hopper-v5 or Walker2d-v5 "
        "(MuJoCo v5); offline algorithms take a dataset name such as halfcheetah-medium."
    )


def _time_limit(env: gym.Env):
    w = env
    while not isinstance(w, gym.wrappers.TimeLimit):
        if not hasattr(w, "env"):
            return None
        w = w.env
    return w


class HostVectorEnv:
    """`n` independent envs; `step(actions)` returns float32 batches and restarts finished episodes."""

    KEEP_FINISHED = 1000  # newest finished-episode returns kept per env until `pop_finished`

    def __init__(self, env_id: str, seeds: list[int]):
        check_env_id(env_id)
        self.envs = [gym.make(env_id) for _ in seeds]
        self.obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)]).astype(np.float32)
        space = self.envs[0].action_space
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.obs_dim = self.obs.shape[1]
        self.act_dim = space.shape[0]
        self.episode_return = np.zeros(len(seeds))
        self.episode_length = np.zeros(len(seeds), dtype=np.int64)
        self.last_return = np.full(len(seeds), np.nan)
        self.ended = np.zeros(len(seeds), bool)  # the last step ended the episode (terminated or truncated)
        self.finished: list[list[float]] = [[] for _ in seeds]  # returns of episodes ended since `pop_finished`

    def scale_action(self, unit_action: np.ndarray) -> np.ndarray:
        """Map actions from [-1, 1] (what the policy outputs) to the env's bounds."""
        return self.low + (np.clip(unit_action, -1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)

    def step(self, unit_actions: np.ndarray) -> dict[str, np.ndarray]:
        """One step of every env; returns the transitions (s, a, r, s', terminal) as float32 arrays."""
        next_obs = np.empty_like(self.obs)
        rewards = np.empty(len(self.envs), np.float32)
        dones = np.zeros(len(self.envs), np.float32)
        reset_obs = self.obs.copy()
        for i, env in enumerate(self.envs):
            o, r, terminated, truncated, _ = env.step(self.scale_action(unit_actions[i]))
            next_obs[i], rewards[i], dones[i] = o, r, float(terminated)
            self.episode_return[i] += r
            self.episode_length[i] += 1
            reset_obs[i] = o
            self.ended[i] = terminated or truncated
            if terminated or truncated:
                self.last_return[i] = self.episode_return[i]
                self.finished[i] = [*self.finished[i][-(self.KEEP_FINISHED - 1):], float(self.episode_return[i])]
                self.episode_return[i], self.episode_length[i] = 0.0, 0
                reset_obs[i] = env.reset()[0]
        batch = {"observations": self.obs, "actions": unit_actions.astype(np.float32), "rewards": rewards,
                 "next_observations": next_obs, "dones": dones}
        self.obs = reset_obs
        return batch

    def pop_finished(self) -> list[list[float]]:
        """Per env, the returns of the episodes ended since the last call."""
        finished, self.finished = self.finished, [[] for _ in self.envs]
        return finished

    # ---- exact save / restore (MuJoCo physics, or a classic-control env's `state`) ----
    def get_state(self) -> dict:
        import mujoco

        envs = []
        for env in self.envs:
            u = env.unwrapped
            entry = {"np_random": _jsonable(u.np_random.bit_generator.state),
                     "elapsed": int(_time_limit(env)._elapsed_steps or 0) if _time_limit(env) else 0}
            if hasattr(u, "model") and hasattr(u, "data"):
                spec = mujoco.mjtState.mjSTATE_INTEGRATION
                physics = np.empty(mujoco.mj_stateSize(u.model, spec))
                mujoco.mj_getState(u.model, u.data, physics, spec)
                entry["physics"] = physics.tolist()
            elif getattr(u, "state", None) is not None:  # classic control (Pendulum, CartPole, ...)
                entry["state"] = np.asarray(u.state).tolist()
            envs.append(entry)
        return {"envs": envs, "obs": self.obs.tolist(), "episode_return": self.episode_return.tolist(),
                "episode_length": self.episode_length.tolist(), "last_return": self.last_return.tolist(),
                "ended": self.ended.tolist(), "finished": self.finished}

    def set_state(self, state: dict) -> None:
        import mujoco

        for env, entry in zip(self.envs, state["envs"]):
            u = env.unwrapped
            u.np_random.bit_generator.state = entry["np_random"]
            limit = _time_limit(env)
            if limit is not None:
                limit._elapsed_steps = entry["elapsed"]
            if "physics" in entry:
                mujoco.mj_setState(u.model, u.data, np.asarray(entry["physics"]), mujoco.mjtState.mjSTATE_INTEGRATION)
            elif "state" in entry:
                u.state = np.asarray(entry["state"], dtype=np.asarray(u.state).dtype)
        self.obs = np.asarray(state["obs"], np.float32)
        self.episode_return = np.asarray(state["episode_return"], np.float64)
        self.episode_length = np.asarray(state["episode_length"], np.int64)
        self.last_return = np.asarray(state["last_return"], np.float64)
        self.ended = np.asarray(state.get("ended", np.zeros(len(self.envs))), bool)
        self.finished = [list(f) for f in state.get("finished", [[] for _ in self.envs])]

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.integer):
        return int(x)
    return x
