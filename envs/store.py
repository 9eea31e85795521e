"""The local Minari store ($MINARI_DATASETS_PATH, default ~/.minari/datasets): write a built dataset into it
atomically with its build record `rlzoo_build.json`, read a build back, and update a build's reference scores."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

from envs.collect import Collected
from envs.recipes import build_command
from envs.shared import write_atomic
from rlzoo.datasets import KINDS, datasets_root, local_id, split_alias
from rlzoo.errors import RlzooError
from rlzoo.rundir import process_alive

STAGING = ".rlzoo-staging"  # hidden folder of the store where datasets are built before the rename
AUTHOR = "rlzoo envs (python -m envs.build_dataset; locally built)"


@contextlib.contextmanager
def _minari_root(path: Path):
    """Point Minari at another store for the duration (Minari reads MINARI_DATASETS_PATH on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def remove_stale_staging(root: Path) -> None:
    """Delete what crashed builds left in the store's staging folder (folders named <pid>-<hex>)."""
    staging = root / STAGING
    if not staging.is_dir():
        return
    for d in staging.iterdir():
        pid = d.name.split("-", 1)[0]
        if not pid.isdigit() or not process_alive(int(pid)) or int(pid) == os.getpid():
            shutil.rmtree(d, ignore_errors=True)


def _create(stage: Path, dataset_id: str, env_id: str, collected: Collected, *, ref_min: float, ref_max: float,
            description: str, algorithm_name: str, record: dict) -> Path:
    """Write the Minari dataset and its build record into the staging store `stage`; returns its folder."""
    import gymnasium as gym
    import minari

    env = gym.make(env_id)
    obs_space = env.observation_space
    obs_space = gym.spaces.Box(obs_space.low.astype(np.float32), obs_space.high.astype(np.float32), dtype=np.float32)
    with _minari_root(stage), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*author_email.*")
        ds = minari.create_dataset_from_buffers(
            dataset_id, collected.episodes, env=env, eval_env=env_id, algorithm_name=algorithm_name, author=AUTHOR,
            code_permalink=record["code"], observation_space=obs_space, action_space=env.action_space,
            ref_min_score=float(ref_min), ref_max_score=float(ref_max), description=description)
        ds.storage.update_metadata({"rlzoo_build": json.dumps(record)})  # JSON text: Minari would store a repr
    env.close()
    staged = stage / dataset_id
    (staged / "rlzoo_build.json").write_text(json.dumps(record, indent=2) + "\n")
    return staged


def write_dataset(dataset_id: str, env_id: str, collected: Collected, *, ref_min: float, ref_max: float,
                  description: str, algorithm_name: str, record: dict) -> Path:
    """Write the episodes as Minari dataset `dataset_id`, atomically: it is built in a staging store inside the
    real one and renamed into place, so a crash never leaves a dataset that looks complete."""
    from minari.namespace import create_namespace, list_local_namespaces

    root = datasets_root()
    remove_stale_staging(root)
    stage = root / STAGING / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    final = root / dataset_id
    try:
        staged = _create(stage, dataset_id, env_id, collected, ref_min=ref_min, ref_max=ref_max,
                         description=description, algorithm_name=algorithm_name, record=record)
        namespace = dataset_id.rsplit("/", 1)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if namespace not in list_local_namespaces():
                create_namespace(namespace, description="rlzoo: LOCALLY BUILT D4RL-style stand-in datasets")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force: move the old one aside first; the rename of the new one is atomic
            os.rename(final, stage / "old")
        os.rename(staged, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / STAGING).rmdir()
    return final


def on_disk_build(alias: str, needed_for: str) -> tuple[Path, dict]:
    """(directory, build record) of the locally built `alias`; a one-paragraph error with the build command when
    it is not built (`needed_for` says what was wanted from it)."""
    task, kind = split_alias(alias)
    path = datasets_root() / local_id(task, kind)
    if not (path / "rlzoo_build.json").is_file():
        raise RlzooError(f"'{alias}' is not built at {path}, so {needed_for}; build it with {build_command(alias)}")
    return path, json.loads((path / "rlzoo_build.json").read_text())


def rewrite_record(path: Path, record: dict) -> None:
    """Store an updated build record (and its reference scores) in the dataset at `path`, Minari metadata too."""
    from minari.dataset.minari_dataset import MinariDataset

    ds = MinariDataset(path / "data")
    ds.storage.update_metadata({"ref_min_score": record["ref_min_score"], "ref_max_score": record["ref_max_score"],
                                "rlzoo_build": json.dumps(record)})
    write_atomic(path / "rlzoo_build.json", json.dumps(record, indent=2) + "\n")


def stale_siblings(task: str, kind: str, refs: dict) -> list[str]:
    """Other locally built datasets of `task` whose recorded reference scores differ from `refs`."""
    out = []
    for other in KINDS:
        path = datasets_root() / local_id(task, other) / "rlzoo_build.json"
        if other == kind or not path.is_file():
            continue
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(path.read_text())
            if (rec.get("ref_min_score"), rec.get("ref_max_score")) != (refs["ref_min_score"], refs["ref_max_score"]):
                out.append(f"{task}-{other}")
    return out
