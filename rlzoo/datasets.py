"""Offline datasets: D4RL-style names -> Minari ids -> arrays on the device, plus reference scores.

Resolution order for a D4RL-style alias such as `halfcheetah-medium`:
  1. the official Minari dataset (`mujoco/halfcheetah/medium-v0`) if it is already on disk;
  2. the official dataset downloaded, only if downloads are allowed and the remote answers quickly;
  3. this project's locally built stand-in (`rlzoo-local/halfcheetah/medium-v0`), reported loudly;
  4. otherwise an RlzooError that lists what was tried and the command that builds the dataset.
Any Minari id or a path to a Minari dataset directory is accepted as well.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlzoo.errors import RlzooError, close_matches

# D4RL-style MuJoCo tasks and the Gymnasium v5 environment each one is played in.
MUJOCO_ENVS = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}
KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
# Minari's official MuJoCo set (v0, regenerated on Gymnasium v5; not the D4RL v2 files).
OFFICIAL_KINDS = ("random", "simple", "medium", "expert")
# A composite dataset is the concatenation of its parts (D4RL's medium-expert = medium + expert).
COMPOSITES = {"medium-expert": ("medium", "expert")}
LOCAL_NAMESPACE = "rlzoo-local"
# Locally built datasets of tasks with no official Minari counterpart: alias -> (task, kind, env id).
LOCAL_TASKS = {"pointmaze-stitch": ("pointmaze", "stitch", "rlzoo/PointMaze-Stitch-v0")}
# How a user builds a dataset of the local namespace (rlzoo's repository has the builder): the one pointer
# upward that the missing-dataset paragraph must give, as text only.
BUILD_COMMAND = "python -m envs.build_dataset"


def aliases() -> list[str]:
    """Every D4RL-style alias this project knows."""
    return [f"{task}-{kind}" for task in MUJOCO_ENVS for kind in KINDS] + list(LOCAL_TASKS)


def split_alias(name: str) -> tuple[str, str] | None:
    """`hopper-medium-replay` -> ("hopper", "medium-replay"); None if `name` is not an alias."""
    task, _, kind = name.partition("-")
    if task in MUJOCO_ENVS and kind in KINDS:
        return task, kind
    return None


def official_id(task: str, kind: str) -> str:
    return f"mujoco/{task}/{kind}-v0"


def local_id(task: str, kind: str) -> str:
    return f"{LOCAL_NAMESPACE}/{task}/{kind}-v0"


def build_command(alias: str) -> str:
    return f"{BUILD_COMMAND} {alias}"


def datasets_root() -> Path:
    """The Minari store: $MINARI_DATASETS_PATH or ~/.minari/datasets."""
    from minari.storage import get_dataset_path

    return Path(get_dataset_path()).expanduser()


def on_disk(dataset_id: str) -> bool:
    return (datasets_root() / dataset_id / "data").is_dir()


def remote_reachable(timeout: float = 3.0) -> bool:
    """True when the Minari remote's host answers within `timeout` seconds (never hangs offline)."""
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    host = {"hf": "huggingface.co", "gcp": "storage.googleapis.com"}.get(remote.split("://")[0])
    if host is None:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@dataclass
class Resolved:
    """Where a dataset name led: the Minari ids to concatenate and whether they are official or local."""

    name: str
    dataset_ids: list[str]
    source: str  # "official" | "local" | "path" | "minari"
    env_id: str | None = None
    tried: list[str] = field(default_factory=list)


def _announce_local(name: str, ids: list[str]) -> None:
    print(
        f"\n*** NOTE: '{name}' is this project's LOCALLY BUILT stand-in ({' + '.join(ids)}), not the official "
        "D4RL/Minari data. Scores on it are not comparable with published D4RL numbers. ***\n",
        file=sys.stderr,
    )


def _by_id(name: str, dataset_id: str) -> Resolved:
    """A dataset named by its Minari id or path: labelled by its namespace, so that this project's builds
    (rlzoo-local/...) stay "local" and the official MuJoCo set (mujoco/...) "official" however they are named."""
    namespace = Path(dataset_id).parts
    if LOCAL_NAMESPACE in namespace:
        _announce_local(name, [dataset_id])
        return Resolved(name, [dataset_id], "local")
    if not os.path.isabs(dataset_id) and namespace[0] == "mujoco":
        return Resolved(name, [dataset_id], "official")
    return Resolved(name, [dataset_id], "path" if os.path.isabs(dataset_id) else "minari")


def resolve(name: str, download: bool = True) -> Resolved:
    """Map a dataset name to Minari ids following the order in this module's docstring."""
    if os.path.isdir(name):
        path = Path(name).resolve()
        if path.name == "data" and (path / "metadata.json").is_file():
            path = path.parent  # the dataset's data/ folder itself was given
        if not (path / "data").is_dir():
            raise RlzooError(
                f"'{name}' is a directory but not a Minari dataset: a dataset directory holds a data/ folder "
                "(data/metadata.json and the episodes' file). Pass such a directory (e.g. "
                f"{datasets_root() / local_id('hopper', 'medium')}), a Minari id such as mujoco/hopper/medium-v0, "
                "or a D4RL-style name such as hopper-medium."
            )
        return _by_id(name, str(path))
    if name in LOCAL_TASKS:
        task, kind, env_id = LOCAL_TASKS[name]
        lid = local_id(task, kind)
        if on_disk(lid):
            _announce_local(name, [lid])
            return Resolved(name, [lid], "local", env_id, [f"{lid} (locally built)"])
        raise RlzooError(f"dataset '{name}' is not built yet (it is built locally only, as {lid}); build it with: "
                         f"{build_command(name)}  (it is written to the Minari store at {datasets_root()})")
    parsed = split_alias(name)
    if parsed is None:
        if "/" in name and name.rsplit("-v", 1)[-1].isdigit():
            if on_disk(name):
                return _by_id(name, name)
            if download and remote_reachable():
                _download(name)
                return _by_id(name, name)
        local_ids = _local_dataset_ids()
        matches = close_matches(name, aliases() + local_ids)
        raise RlzooError(
            f"unknown dataset '{name}'. "
            + (f"Close matches: {', '.join(matches)}. " if matches else "")
            + "Use a D4RL-style name <task>-<kind> with task in "
            f"{{{', '.join(MUJOCO_ENVS)}}} and kind in {{{', '.join(KINDS)}}}, a locally built task "
            f"({', '.join(LOCAL_TASKS)}), a Minari id such as mujoco/hopper/medium-v0, or the path of a Minari "
            "dataset directory. Build a local dataset with: "
            f"{build_command(next((m for m in matches if split_alias(m) or m in LOCAL_TASKS), 'halfcheetah-medium'))}"
        )
    task, kind = parsed
    env_id = MUJOCO_ENVS[task]
    tried = []
    parts = COMPOSITES.get(kind, (kind,))
    if all(p in OFFICIAL_KINDS for p in parts):
        ids = [official_id(task, p) for p in parts]
        tried.append(" + ".join(ids) + " (official, on disk)")
        if all(on_disk(i) for i in ids):
            return Resolved(name, ids, "official", env_id, tried)
        if download:
            tried.append("download of the official dataset")
            if remote_reachable():
                for i in ids:
                    if not on_disk(i):
                        _download(i)
                return Resolved(name, ids, "official", env_id, tried)
            tried[-1] += " (remote unreachable)"
    # Locally built: a composite is its locally built parts (never official and local parts mixed).
    lids = [local_id(task, p) for p in parts]
    tried.append(" + ".join(lids) + " (locally built)")
    if all(on_disk(i) for i in lids):
        _announce_local(name, lids)
        return Resolved(name, lids, "local", env_id, tried)
    raise RlzooError(
        f"dataset '{name}' is not available: tried {'; '.join(tried)}. No download is possible from "
        f"here, so build the locally built stand-in (D4RL recipe on {env_id}) with: "
        f"{build_command(name)}  (it is written to the Minari store at {datasets_root()})"
    )


def _download(dataset_id: str) -> None:
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as err:  # network errors come in many types; all mean the same here
        raise RlzooError(
            f"downloading Minari dataset '{dataset_id}' failed ({type(err).__name__}: {err}). Check the "
            "network, or build the locally built stand-in with " + BUILD_COMMAND
        ) from err


def _local_dataset_ids() -> list[str]:
    root = datasets_root()
    if not root.is_dir():
        return []
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("data") if p.is_dir())


def normalize(returns, ref_min: float, ref_max: float):
    """D4RL's normalized score, 100 * (R - R_random) / (R_expert - R_random)."""
    return 100.0 * (np.asarray(returns) - ref_min) / (ref_max - ref_min)


@dataclass
class OfflineDataset:
    """Transitions as float32 numpy arrays (row i: s, a, r, s', terminal, timeout) plus metadata."""

    name: str
    source: str
    dataset_ids: list[str]
    env_id: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray  # 1.0 where the episode ended in a true termination (no bootstrapping)
    timeouts: np.ndarray  # 1.0 where the episode was cut by a time limit (bootstrapping continues)
    episode_returns: np.ndarray
    episode_complete: np.ndarray  # True where the episode ended by itself: a termination or the env's time limit
    ref_min_score: float | None
    ref_max_score: float | None
    metadata: dict = field(default_factory=dict)
    episode_lengths: np.ndarray | None = None  # transitions per episode, in order (None: not recorded)

    def __len__(self) -> int:
        return len(self.rewards)

    def normalized_score(self, returns):
        """100 * (R - R_random) / (R_expert - R_random), the D4RL convention."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise RlzooError(
                f"dataset '{self.name}' has no ref_min_score/ref_max_score in its metadata, so no "
                "normalized score can be computed; rebuild it with " + build_command(self.name)
            )
        return normalize(returns, self.ref_min_score, self.ref_max_score)

    def observation_stats(self, eps: float = 1e-3, with_next: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std (+eps) of the observations, for state normalization; `with_next`: of the
        observations and next observations together (RIQL's code)."""
        obs = np.concatenate([self.observations, self.next_observations]) if with_next else self.observations
        return obs.mean(0), obs.std(0) + eps

    def returns_of(self, rewards: np.ndarray) -> np.ndarray:
        """Each episode's return under other per-transition `rewards` (e.g. corrupted ones)."""
        if self.episode_lengths is None or int(np.sum(self.episode_lengths)) != len(rewards):
            raise RlzooError(f"dataset '{self.name}' records no episode lengths, so its returns cannot be recomputed")
        episode = np.repeat(np.arange(len(self.episode_lengths)), self.episode_lengths)
        return np.bincount(episode, weights=np.asarray(rewards, np.float64), minlength=len(self.episode_lengths))

    @property
    def complete_returns(self) -> np.ndarray:
        return complete_returns(self.episode_returns, self.episode_complete)

    def reward_scale(self) -> float:
        """IQL's MuJoCo reward scale: 1000 / (max - min return over the episodes that ended by themselves), as
        CORL computes it (a 1-step fragment cut by the budget would otherwise set the minimum)."""
        returns = self.complete_returns
        spread = float(returns.max() - returns.min())
        return 1000.0 / spread if spread > 0 else 1.0

    def transitions(self, obs_mean=None, obs_std=None, reward_scale: float = 1.0) -> dict[str, np.ndarray]:
        """The arrays an update samples from, optionally normalized."""
        obs, next_obs = self.observations, self.next_observations
        if obs_mean is not None:
            obs, next_obs = (obs - obs_mean) / obs_std, (next_obs - obs_mean) / obs_std
        return {
            "observations": obs.astype(np.float32),
            "actions": self.actions.astype(np.float32),
            "rewards": (self.rewards * reward_scale).astype(np.float32),
            "next_observations": next_obs.astype(np.float32),
            "dones": self.terminals.astype(np.float32),
        }

    @property
    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "data_source": self.source,
            "dataset_ids": self.dataset_ids,
            "env_id": self.env_id,
            "transitions": len(self),
            "episodes": len(self.episode_returns),
            "return_mean": float(self.complete_returns.mean()),
            "returns_over": "episodes that ended by themselves (termination or time limit)",
            "ref_min_score": self.ref_min_score,
            "ref_max_score": self.ref_max_score,
            "parts": self.metadata.get("part_summaries", []),
            "corruption": self.metadata.get("corruption"),
        }


def load(name: str, download: bool = True) -> OfflineDataset:
    """Resolve `name` and read every episode into flat transition arrays."""
    resolved = resolve(name, download=download)
    parts = [_read_minari(dataset_id, name) for dataset_id in resolved.dataset_ids]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if isinstance(parts[0][k], np.ndarray)}
    meta = parts[0]["metadata"]
    env_id = resolved.env_id or meta.get("env_id")
    if env_id is None:
        raise RlzooError(f"dataset '{name}' records no environment id, so it cannot be evaluated")
    refs = [(p["metadata"].get("ref_min_score"), p["metadata"].get("ref_max_score")) for p in parts]
    ref_min, ref_max = refs[0]
    if any(not np.allclose(np.asarray(r, float), np.asarray(refs[0], float), rtol=1e-3) for r in refs
           if None not in r and None not in refs[0]):
        raise RlzooError(f"the parts of '{name}' ({resolved.dataset_ids}) disagree on reference scores: {refs}")
    return OfflineDataset(
        name=name,
        source=resolved.source,
        dataset_ids=resolved.dataset_ids,
        env_id=env_id,
        ref_min_score=None if ref_min is None else float(ref_min),
        ref_max_score=None if ref_max is None else float(ref_max),
        metadata={"parts": [p["metadata"] for p in parts], "tried": resolved.tried,
                  "part_summaries": [_part_summary(i, p) for i, p in zip(resolved.dataset_ids, parts)]},
        **cat,
    )


def _time_limit(env_spec) -> int | None:
    """The env's episode time limit from the dataset's stored spec, else Gymnasium's registry, else None."""
    limit = getattr(env_spec, "max_episode_steps", None)
    if limit is None and env_spec is not None:
        import gymnasium as gym

        registered = gym.registry.get(env_spec.id)
        limit = getattr(registered, "max_episode_steps", None)
    return int(limit) if limit else None


def complete_returns(returns: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """Returns of the episodes that ended by themselves (all of them when none did). A fragment cut by the
    collection budget, e.g. the last steps of a 1M-step dataset, is no episode return and is left out."""
    return returns[complete] if complete.any() else returns


# What a locally built dataset's own build record calls its recipe (the data are bit-identical only on the same
# CPU signature).
RECIPE_KEYS = ("env_id", "kind", "policy_sha256", "seed", "num_envs", "steps", "full_recipe")


def recipe_of(build: dict) -> dict:
    """The recipe part of a build record; for a medium-replay re-run also whether it reproduced the committed
    medium actor (when it did not, its replay is that of another training run)."""
    return {**{k: build.get(k) for k in RECIPE_KEYS},
            "reproduces_medium_policy": (build.get("replay") or {}).get("reproduces_medium_policy")}


def _part_summary(dataset_id: str, part: dict) -> dict:
    """What identifies one stored dataset's build: size and mean return over its complete episodes, and for a
    locally built one the recipe it followed and the CPU it was built on."""
    returns = complete_returns(part["episode_returns"], part["episode_complete"])
    summary = {"dataset_id": dataset_id, "transitions": len(part["rewards"]),
               "episodes": len(part["episode_returns"]), "return_mean": float(returns.mean())}
    build = part["metadata"].get("rlzoo_build")
    if isinstance(build, str):  # the Minari metadata copy (JSON text) of a dataset moved without its record
        try:
            build = json.loads(build)
        except ValueError:
            build = None
    if isinstance(build, dict):
        summary["recipe"] = recipe_of(build)
        summary["built_on"] = build.get("machine", "unrecorded")
    return summary


def _read_minari(dataset_id: str, name: str) -> dict:
    """Read one Minari dataset (id or directory) into flat arrays; any failure becomes an RlzooError."""
    import minari
    from minari.dataset.minari_dataset import MinariDataset

    path = Path(dataset_id) if os.path.isabs(dataset_id) else datasets_root() / dataset_id
    rebuild = (
        f"Delete {path} and rebuild it with: {build_command(name)} --force"
        if split_alias(name)
        else f"Delete {path} and download or rebuild it."
    )
    try:
        ds = MinariDataset(path / "data") if os.path.isabs(dataset_id) else minari.load_dataset(dataset_id)
        obs, act, rew, next_obs, term, trunc, returns, ends = [], [], [], [], [], [], [], []
        for ep in ds.iterate_episodes():
            if isinstance(ep.observations, dict):
                raise RlzooError(f"dataset '{dataset_id}' has dictionary observations (goal-conditioned, e.g. "
                                 "AntMaze); rlzoo's offline algorithms support flat Box observations only so far.")
            o = np.asarray(ep.observations, dtype=np.float32)
            obs.append(o[:-1])
            next_obs.append(o[1:])
            act.append(np.asarray(ep.actions, dtype=np.float32))
            rew.append(np.asarray(ep.rewards, dtype=np.float32))
            term.append(np.asarray(ep.terminations, dtype=np.float32))
            trunc.append(np.asarray(ep.truncations, dtype=np.float32))
            returns.append(float(np.sum(ep.rewards)))
            ends.append((bool(term[-1][-1]) if len(term[-1]) else False, len(rew[-1])))
        metadata = dict(ds.storage.metadata)
        spec = ds.spec.env_spec if hasattr(ds, "spec") else None
        env_spec = spec or ds.env_spec
        metadata["env_id"] = env_spec.id if env_spec is not None else None
        if (path / "rlzoo_build.json").is_file():  # the builder's full record of a local build
            metadata["rlzoo_build"] = json.loads((path / "rlzoo_build.json").read_text())
        time_limit = _time_limit(env_spec)
    except RlzooError:
        raise
    except Exception as err:
        raise RlzooError(
            f"dataset '{dataset_id}' at {path} is corrupt or half-written and cannot be read "
            f"({type(err).__name__}: {str(err)[:200]}). {rebuild}"
        ) from err
    if not obs:
        raise RlzooError(f"dataset '{dataset_id}' at {path} holds no episodes. {rebuild}")
    out = {
        "observations": np.concatenate(obs),
        "actions": np.concatenate(act),
        "rewards": np.concatenate(rew),
        "next_observations": np.concatenate(next_obs),
        "terminals": np.concatenate(term),
        "timeouts": np.concatenate(trunc),
        "episode_returns": np.asarray(returns, dtype=np.float64),
        "episode_lengths": np.asarray([length for _, length in ends], dtype=np.int64),
        # CORL's rule (return_reward_range): an episode is complete when it terminated or ran to the time limit.
        "episode_complete": np.asarray([terminated or time_limit is None or length >= time_limit
                                        for terminated, length in ends], dtype=bool),
        "metadata": metadata,
    }
    for key in ("observations", "actions", "rewards", "next_observations"):
        if not np.all(np.isfinite(out[key])):
            raise RlzooError(f"dataset '{dataset_id}' at {path} contains NaN or inf in '{key}'. {rebuild}")
    return out


def pin_to_run(dataset: OfflineDataset, run_dir: Path, resuming: bool) -> None:
    """Record which data a run trains on (dataset.json); a resumed run must find the same data again: not an
    official copy downloaded in between, nor a rebuild or new reference scores (`--refs-only`), which would
    put two normalizations into one eval.csv. The record of the run's start is kept."""
    path = Path(run_dir) / "dataset.json"
    if resuming and path.exists():
        saved = json.loads(path.read_text())
        now = dataset.summary
        changed = [k for k in ("dataset_ids", "transitions", "episodes") if saved.get(k, now[k]) != now[k]]
        if (saved.get("corruption") or {}).get("indices_sha256") != (now["corruption"] or {}).get("indices_sha256"):
            changed.append("corruption")
        numbers = ("ref_min_score", "ref_max_score", "return_mean")  # return_mean identifies the data itself
        changed += [k for k in numbers
                    if saved.get(k) is not None and now[k] is not None and not np.isclose(saved[k], now[k], rtol=1e-9)]
        if changed:
            raise RlzooError(
                f"the run in {run_dir} trained on {saved['dataset_ids']} ({saved['data_source']}, "
                f"{saved['transitions']} transitions, reference scores {saved.get('ref_min_score')} / "
                f"{saved.get('ref_max_score')}) but '{dataset.name}' now resolves to {dataset.dataset_ids} "
                f"({dataset.source}, {len(dataset)} transitions, reference scores {dataset.ref_min_score} / "
                f"{dataset.ref_max_score}): {', '.join(changed)} changed, so resuming would switch data or "
                "normalization mid-run. Start a new run, or restore the original dataset."
            )
        return
    path.write_text(json.dumps(dataset.summary, indent=2))
