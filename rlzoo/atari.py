"""Atari through ale-py: `AtariEnvs` (seeds x envs games with the standard preprocessing) and the training
signals (reward clipping, episodic life) computed from the raw reward and the lives counter."""

from __future__ import annotations

import numpy as np

# ale-py's vector env does the standard preprocessing in C++: frame skip 4 with a max over the last two
# frames, 84x84 grayscale, a stack of the last 4 frames (observations [num_envs, 4, 84, 84] uint8), up to 30
# no-op starts, FIRE on reset, and a 108k-frame episode limit. What it leaves to us lives here: Gymnasium's
# v5 settings (sticky actions 0.25, minimal action set), and the training-only signals, reward clipping
# and "episodic life" (a lost life ends the episode for learning, not the game), which are computed from
# the raw reward and the lives counter so that the raw game score stays available for logging. A lost life
# is not followed by no-ops and FIRE (envpool's episodic life does that): the game goes on from where it is.

ATARI_V5 = {"frameskip": 4, "repeat_action_probability": 0.25, "full_action_space": False, "noop_max": 30,
            "img_height": 84, "img_width": 84, "grayscale": True, "stack_num": 4, "maxpool": True,
            "max_num_frames_per_episode": 108_000}
"""The settings `AtariEnvs` passes to `ale_py.AtariVectorEnv` (Gymnasium's ALE v5 defaults + standard preprocessing)."""


def atari_game(env_id: str) -> str | None:
    """ale-py ROM name for `ALE/Breakout-v5`, `Breakout` or `breakout` (None if it is not an Atari name)."""
    import ale_py  # noqa: F401  (registers the ALE/ ids with Gymnasium)
    import gymnasium as gym
    from ale_py import roms

    candidates = [env_id] if env_id.startswith("ALE/") else [f"ALE/{env_id}-v5"]
    for candidate in candidates:
        if candidate in gym.registry:
            return gym.spec(candidate).kwargs["game"]
    return env_id if env_id in roms.get_all_rom_ids() else None


def atari_env_ids() -> list[str]:
    import ale_py  # noqa: F401
    import gymnasium as gym

    return sorted(k for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))


def atari_signals(reward, terminated, truncated, lives, prev_lives, prev_game_over, clip_rewards: bool,
                  episodic_life: bool, xp=np):
    """Training signals from one ale-py step (works on numpy or jax.numpy arrays, `xp`).

    ale-py resets a finished game on the *next* step (autoreset "NextStep"): that step's action is ignored
    and its transition (terminal frame -> first frame) is not a real one, so it is marked invalid.
    Returns (train_reward, done, valid, game_over): `train_reward` is sign(r) with clipping on (the paper's
    Atari setting), else r; `done` ends the learning episode at a game end (termination or the 108k-frame
    truncation, both treated as terminal, as the reference does) and, with episodic life, at a lost life.
    """
    game_over = terminated | truncated
    valid = ~prev_game_over
    life_lost = (lives < prev_lives) & valid
    done = game_over | (life_lost if episodic_life else xp.zeros_like(game_over))
    train_reward = xp.sign(reward) if clip_rewards else reward
    return train_reward.astype(xp.float32), done & valid, valid, game_over & valid


class AtariEnvs:
    """`num_envs` Atari games in one `ale_py.AtariVectorEnv` (C++ threads), stepped as a batch from the host.

    `step(actions)` returns (obs uint8 [n, 4, 84, 84], train_reward, done, valid, raw_reward, game_over),
    with the training signals of `atari_signals`. Training uses clip_rewards=True, episodic_life=True; the
    evaluation env uses both False, so evaluation reports the raw game score.
    """

    def __init__(self, game: str, num_envs: int, seed: int, *, clip_rewards: bool, episodic_life: bool,
                 sticky_actions: float = ATARI_V5["repeat_action_probability"], num_threads: int = 0):
        import ale_py

        kwargs = {**ATARI_V5, "repeat_action_probability": sticky_actions}
        self.env = ale_py.AtariVectorEnv(game=game, num_envs=num_envs, num_threads=num_threads,
                                         autoreset_mode="NextStep", reward_clipping=False, episodic_life=False,
                                         **kwargs)
        self.num_envs, self.seed = num_envs, seed
        self.num_actions = int(self.env.single_action_space.n)
        self.obs_shape = tuple(self.env.single_observation_space.shape)
        self.clip_rewards, self.episodic_life = clip_rewards, episodic_life
        self.lives = np.zeros(num_envs, np.int32)
        self.game_over = np.zeros(num_envs, bool)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every game; env i gets seed `seed + i` (default: the constructor's seed)."""
        seed = self.seed if seed is None else seed
        obs, info = self.env.reset(seed=np.arange(seed, seed + self.num_envs, dtype=np.int64) % (2**31 - 1))
        self.lives = np.asarray(info["lives"], np.int32)
        self.game_over = np.zeros(self.num_envs, bool)
        return obs

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions, np.int32))
        lives = np.asarray(info["lives"], np.int32)
        reward = np.asarray(reward, np.float32)
        train_reward, done, valid, game_over = atari_signals(
            reward, np.asarray(terminated), np.asarray(truncated), lives, self.lives, self.game_over,
            self.clip_rewards, self.episodic_life)
        self.lives, self.game_over = lives, game_over
        return obs, train_reward, done, valid, reward * valid, game_over

    def close(self) -> None:
        self.env.close()
