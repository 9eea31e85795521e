"""Save and resume the whole training state (params, optimizer states, RNG keys, step) with orbax."""

from __future__ import annotations

import shlex
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from rlzoo.errors import RlzooError


class Checkpointer:
    """Keeps the newest `max_to_keep` checkpoints of `run_dir/checkpoints`; each holds the device state
    (a pytree saved bit-exactly) and a JSON `meta` dict (step, host-side state such as env states)."""

    def __init__(self, run_dir: str | Path, max_to_keep: int = 2):
        self.restored_meta: dict = {}  # meta of the checkpoint restored last (e.g. wall_s of earlier processes)
        self.directory = Path(run_dir).resolve() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def save(self, step: int, state, meta: dict) -> None:
        """Write and wait: the next chunk donates the state's buffers, so the save must be complete first.
        Orbax writes to a temporary folder and renames it, so a kill mid-save leaves the previous one."""
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like, step: int | None = None):
        """Restore (state, meta); `like` is a freshly initialized state giving shapes, dtypes and types."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise RlzooError(
                f"no checkpoint found in {self.directory}: --resume needs the run directory of an earlier "
                "run (the folder printed at its start, which holds checkpoints/). Start a new run without "
                "--resume, or point --resume at the right folder."
            )
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = lambda: ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        try:
            out = self.manager.restore(step, args=args())
        except Exception as err:
            raise RlzooError(self._unrestorable(step, err, args)) from err
        self.restored_meta = dict(out["meta"])
        return out["state"], out["meta"]

    def _unrestorable(self, step: int, err: Exception, args) -> str:
        """What to do when checkpoint `step` cannot be restored: if the newest older one can, the newest is
        damaged (move it aside, resume from the older); if not, no checkpoint fits this run's code or config."""
        detail = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        older = [s for s in self.manager.all_steps() if s < step]
        if older:
            try:
                self.manager.restore(max(older), args=args())
            except Exception:
                older = []
        if not older:
            return (f"no checkpoint in {self.directory} can be restored into this run ({detail}). Either they do "
                    "not fit this code and configuration (the code changed since they were written: resume with "
                    "the code the run was started with) or they are damaged; start a new run without --resume.")
        bad = shlex.quote(str(Path(self.directory) / str(step)))
        return (f"the checkpoint at step {step} in {self.directory} is damaged and cannot be restored ({detail}); "
                f"the one at step {max(older)} can. To continue from there, move the step-{step} checkpoint "
                f"aside (mv {bad} {bad}.corrupt) and resume again.")

    def read(self, step: int | None = None):
        """Restore (state, meta) as saved, without a template: nested dicts of arrays (dataclasses such
        as a TrainState or a replay buffer come back as dicts). For reading a run, not resuming it."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise RlzooError(f"no checkpoint found in {self.directory}")
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        )
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def has_checkpoint(run_dir: str | Path) -> bool:
    d = Path(run_dir) / "checkpoints"
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def save_params(path: str | Path, params, meta: dict | None = None) -> None:
    """Parameters as a flat .npz ("a/b/kernel" keys) plus a JSON `meta` entry: small files that a
    dataset builder or a user can load without the training state."""
    import json

    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(path, __meta__=np.asarray(json.dumps(meta or {})), **flat)


def load_params(path: str | Path) -> tuple[dict, dict]:
    """Inverse of `save_params`: (nested params dict, meta)."""
    import json
    import zipfile

    import numpy as np

    try:
        with np.load(path) as data:
            meta = json.loads(str(data["__meta__"])) if "__meta__" in data else {}
            params: dict = {}
            for name in data.files:
                if name == "__meta__":
                    continue
                node = params
                *parents, leaf = name.split("/")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = data[name]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise RlzooError(f"cannot read parameters from {path} ({type(err).__name__}: {err}); the file is "
                         "missing or corrupt") from err
    return params, meta
