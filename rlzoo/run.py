"""The run lifecycle every algorithm shares, offline and online.

    run = Run.start(config, "sac", prepare=check_config)      # options checked, run dir created or reopened
    state = run.restore(jax.vmap(init)(run.keys), host={"envs": envs})  # the checkpoint's state when resuming
    state = run.train(state, chunk, evaluate, "return")        # chunks, evaluation, NaN checks, checkpoints
    run.save_policy(state["actor"].params)                     # policy.npz, what dataset builders load
    return run.finish(task=config.env, data_source="online")   # one line per seed, summary.json

An algorithm supplies `chunk(state) -> (state, metrics)` (config.chunk steps from `run.step`, usually one
jitted `lax.scan`, metrics shaped [seeds, K]) and `evaluate(state) -> (returns [seeds, episodes], scores
[seeds])`, called at `run.step`. Host-side state that a checkpoint must hold (e.g. MuJoCo envs) is given to
`restore` as objects with `get_state()` / `set_state(state)`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo import provenance, rundir
from rlzoo.checkpoint import Checkpointer, save_params
from rlzoo.devices import drop_padding, seed_keys
from rlzoo.errors import NonFiniteLossError, RlzooError
from rlzoo.logger import RunLogger
from rlzoo.options import RunConfig, check_option_ranges


class Run:
    """One training run of `algorithm` with `config` (the saved config when resuming) in `run_dir`."""

    def __init__(self, config: RunConfig, algorithm: str, run_dir: Path, prepared=None):
        self.config, self.algorithm, self.run_dir = config, algorithm, Path(run_dir)
        self.seeds = list(range(config.seed, config.seed + config.num_seeds))
        self.keys = seed_keys(self.seeds)
        self.checkpointer = Checkpointer(self.run_dir)
        self.resuming = bool(config.resume)
        self.prepared = prepared  # what `prepare(config)` returned (e.g. the loaded dataset)
        self.start_step = self.step = 0  # where this process started; the step training has reached
        self.host: dict = {}  # name -> object with get_state() / set_state(), saved with every checkpoint
        self.logger: RunLogger | None = None
        self._train_s = 0.0

    @classmethod
    def start(cls, config: RunConfig, algorithm: str, prepare: Callable | None = None,
              complete: Callable | None = None) -> Run:
        """Check the options, run `prepare(config)` (load the dataset, check the env id, build the program),
        then create or reopen the run directory: bad input never leaves an empty run directory behind.
        `complete(config, prepared) -> config` fills options whose defaults depend on what `prepare` loaded (a
        value head's support from the dataset's rewards); the completed config is the one saved and used."""
        if config.resume:
            config, run_dir = rundir.reopen(config, algorithm)
        else:
            run_dir = rundir.new_path(config, algorithm)
        check_option_ranges(config)
        for name in ("eval_every", "checkpoint_every", "total_steps"):
            value = getattr(config, name)
            if value <= 0 or value % config.chunk:
                raise RlzooError(f"--{name.replace('_', '-')} {value} must be a positive multiple of --chunk "
                                 f"{config.chunk}; change one of them.")
        prepared = prepare(config) if prepare is not None else None
        if complete is not None:
            config = complete(config, prepared)
            check_option_ranges(config)
        if config.resume:
            rundir.hold(run_dir)
        else:
            rundir.create(run_dir, config, algorithm)
        run = cls(config, algorithm, run_dir, prepared)
        print(f"[rlzoo] {algorithm} on {config.env}, seeds {run.seeds}, run dir {run_dir}")
        provenance.commit()  # cached now: results name the code this process started with, not HEAD at its end
        return run

    @property
    def evals_done(self) -> int:
        """Evaluations made before this process (so that a resumed run plays the same evaluation episodes)."""
        return self.start_step // self.config.eval_every

    def restore(self, state, host: dict | None = None, note: str = ""):
        """The newest checkpoint's state when resuming (`state` gives the structure), else `state`. `host` names
        host-side objects (`get_state()` / `set_state(s)`, e.g. the MuJoCo envs) that every checkpoint saves and
        a resume puts back. `note` is appended to the "resumed" line."""
        self.host = dict(host or {})
        if not self.resuming:
            return state
        state, meta = self.checkpointer.restore(state)
        saved = meta.get("host", {})
        missing = [key for key in self.host if key not in saved]
        if missing:
            raise RlzooError(
                f"--resume {self.run_dir}: its checkpoint at step {meta['step']} holds no {', '.join(missing)} "
                "state, so the run cannot continue where it stopped. Start a new run without --resume; the old "
                "run's logs and checkpoints stay in place."
            )
        for key, thing in self.host.items():
            thing.set_state(saved[key])
        self.start_step = self.step = meta["step"]
        print(f"[rlzoo] resumed at step {self.start_step}{note}")
        return state

    def make_logger(self, score_name: str, extra_config: dict | None = None) -> RunLogger:
        """The run's progress bar and CSVs, named `<algorithm>-<env>`, and optional wandb runs, one per seed in a
        group named by the run directory (so each point of a sweep is its own group); `extra_config` (e.g. the
        dataset's summary) is recorded beside the hyperparameters."""
        cfg = self.config
        self.logger = RunLogger(self.run_dir, f"{self.algorithm}-{cfg.env}", cfg.num_seeds, self.seeds,
                                cfg.total_steps, self.start_step, score_name,
                                config={**dataclasses.asdict(cfg), **(extra_config or {})}, use_wandb=cfg.wandb,
                                wandb_project=cfg.wandb_project, wandb_mode=cfg.wandb_mode, quiet=cfg.quiet,
                                group=self.run_dir.resolve().name)
        return self.logger

    def train(self, state, chunk: Callable, evaluate: Callable, score_name: str, extra_config: dict | None = None):
        """Advance `state` chunk by chunk to total_steps, evaluating, logging, checking for NaN and
        checkpointing (with the host objects' states beside the device state). A seed axis that `shard_seeds`
        padded keeps only this run's seeds in everything that leaves the device: metrics, what `evaluate` sees,
        checkpoints, and the state returned."""
        logger = self.logger or self.make_logger(score_name, extra_config)
        cfg = self.config
        real = lambda tree: drop_padding(tree, len(self.seeds))
        t_start = time.perf_counter()
        while self.step < cfg.total_steps:
            state, metrics = chunk(state)
            metrics = {k: np.asarray(v) for k, v in real(jax.device_get(metrics)).items()}
            self._check_finite(metrics, self.step)
            self.step = step = self.step + cfg.chunk
            logger.log_train(step, {k: v.mean(axis=-1) for k, v in metrics.items()})
            if step % cfg.eval_every == 0 or step == cfg.total_steps:
                logger.log_eval(step, *evaluate(real(state)))
            if step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
                self._check_state_finite(state, step)
                self._train_s = time.perf_counter() - t_start
                meta = {"step": step, "host": {k: thing.get_state() for k, thing in self.host.items()},
                        "wall_s": self.wall_s(), "commits": self.commits()}
                self.checkpointer.save(step, real(state), meta)
            logger.advance(step)
        self.checkpointer.wait()
        self._train_s = time.perf_counter() - t_start
        return real(state)

    def wall_s(self) -> float:
        """Training time of this run so far, earlier processes (up to the checkpoint resumed from) included."""
        return float(self.checkpointer.restored_meta.get("wall_s", 0.0)) + self._train_s

    def commits(self) -> list[str]:
        """The commits of every process that trained this run, in order: a run resumed across commits ran the
        code of each."""
        earlier = self.checkpointer.restored_meta.get("commits", [])
        return list(dict.fromkeys([*earlier, provenance.commit()]))

    def save_policy(self, params, **meta) -> None:
        """The final policy parameters as `<run dir>/policy.npz`, with the env, seeds, step and algorithm (and
        `meta`) beside them: what dataset builders and evaluation scripts load."""
        save_params(self.run_dir / "policy.npz", params,
                    meta={"env": self.config.env, **meta, "seeds": self.seeds, "step": self.config.total_steps,
                          "algorithm": self.algorithm})

    def finish(self, task: str, data_source: str, close: Iterable = ()) -> dict:
        """Close `close` (envs, evaluators), print one line per seed and write summary.json."""
        if self.logger is None:
            raise RuntimeError("Run.finish() before Run.train(): there is nothing to summarize")
        for thing in close:
            thing.close()
        self.logger.close()
        self.checkpointer.close()
        scores = final_scores(self.run_dir / "eval.csv", self.seeds)
        commits = self.commits()
        for seed, score in scores.items():
            print(f"[rlzoo] {self.algorithm} {task} seed {seed}: final {self.logger.score_name} {score:.2f}")
        summary = {"algorithm": self.algorithm, "task": task, "data_source": data_source,
                   "score_name": self.logger.score_name, "final_scores": scores, "steps": self.config.total_steps,
                   "wall_s": self.wall_s(), "steps_per_s": self.logger.steps_per_second(), **provenance.info(),
                   "commit": ";".join(commits), "commits": commits}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _last_good_checkpoint(self) -> str:
        last = self.checkpointer.latest_step()
        return (f"the last good checkpoint (step {last}) is kept in {self.checkpointer.directory}; resume from "
                f"it with --resume {self.run_dir}") if last is not None else "no checkpoint had been written yet"

    def _check_finite(self, metrics: dict[str, np.ndarray], first_step: int) -> None:
        """Stop with the step, loss and seed of the first NaN/inf (the last good checkpoint stays).

        A metric with K entries per seed in a chunk has one entry per chunk/K steps (one per gradient step
        offline; one per rollout of many env steps for PQN); its k-th entry is dated at the end of its share."""
        first = None  # (step, seed index, loss name, entry index) of the earliest non-finite value
        for name, values in sorted(metrics.items()):
            bad = np.argwhere(~np.isfinite(values))
            if len(bad):
                seed_idx, k = bad[np.argmin(bad[:, 1])]
                step = first_step + -(-(int(k) + 1) * self.config.chunk // values.shape[1])
                if first is None or step < first[0]:
                    first = (step, int(seed_idx), name, int(k))
        if first is None:
            return
        step, seed_idx, name, k = first
        raise NonFiniteLossError(
            f"training stopped: loss '{name}' became {metrics[name][seed_idx, k]} at step {step} "
            f"(seed {self.seeds[seed_idx]}); {self._last_good_checkpoint()}. Lower the learning rate or check the "
            "data for extreme values before resuming."
        )

    def _check_state_finite(self, state, step: int) -> None:
        """The losses are those before each update, so the last update of a chunk can leave NaN parameters
        behind finite losses: check the state itself before it is saved as a good checkpoint."""
        if bool(_all_finite(state)):
            return
        raise NonFiniteLossError(
            f"training stopped: the parameters became NaN/inf by step {step} (the losses reported up to then "
            f"were finite); it was not saved, and {self._last_good_checkpoint()}. Lower the learning rate or "
            "check the data for extreme values before resuming."
        )


@jax.jit
def _all_finite(state) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.bool_(True)


def final_scores(eval_csv: Path, seeds: list[int], last_n: int = 1) -> dict[int, float]:
    """Mean of each seed's last `last_n` evaluation scores."""
    data = np.atleast_1d(np.genfromtxt(eval_csv, delimiter=",", names=True))
    return {s: float(data["score"][data["seed"] == s][-last_n:].mean()) for s in seeds}
