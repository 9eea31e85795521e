"""The plumbing every algorithm shares: run options, run directory, the chunked training loop.

An algorithm supplies `chunk(state) -> (state, metrics)` (K steps, usually one jitted `lax.scan`,
metrics shaped [seeds, K]) and `evaluate(state) -> (returns [seeds, episodes], scores [seeds])`;
`train_loop` does the rest: progress, CSV/wandb logging, NaN detection, checkpoints and resume.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from rlzoo import provenance
from rlzoo.checkpoint import Checkpointer, has_checkpoint, save_params
from rlzoo.errors import NonFiniteLossError, RlzooError
from rlzoo.logging import RunLogger


@dataclass
class RunConfig:
    """Options every algorithm shares (seeds, length, evaluation, logging, checkpoints)."""

    env: str = "halfcheetah-medium"
    """Task: a dataset name (offline) or a Gymnasium env id (online)."""
    seed: int = 0
    """First seed; seeds are seed, seed+1, ..., seed+num_seeds-1."""
    num_seeds: int = 1
    """Independent seeds trained together in one vmapped program."""
    total_steps: int = 1_000_000
    """Training steps (gradient steps offline, env steps online)."""
    chunk: int = 1000
    """Steps per compiled chunk (one lax.scan); the host is touched once per chunk."""
    eval_every: int = 5000
    """Evaluate every this many steps (a multiple of chunk)."""
    eval_episodes: int = 10
    """Evaluation episodes per seed."""
    checkpoint_every: int = 5000
    """Checkpoint every this many steps (a multiple of chunk); the last one is always written."""
    run_dir: str | None = None
    """Where logs and checkpoints go (default: runs/<algorithm>-<env>-<time>)."""
    resume: str | None = None
    """Resume the run in this directory from its newest checkpoint (its saved hyperparameters are used)."""
    wandb: bool = False
    """Log to Weights & Biases, one run per seed grouped by run name."""
    wandb_project: str = "rlzoo"
    """Weights & Biases project."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """online, offline or disabled; auto = online if WANDB_API_KEY is set, else offline."""
    scores_csv: str | None = None
    """If set, append the final per-seed scores to this CSV (the results/scores.csv schema)."""
    quiet: bool = False
    """No progress bar."""


@dataclass
class Run:
    config: RunConfig
    algorithm: str
    run_dir: Path
    seeds: list[int]
    checkpointer: Checkpointer
    resuming: bool
    prepared: object = None  # what `start_run(..., prepare=...)` returned (e.g. the loaded dataset)


# Options that say where and how a run reports, not what it computes (config.json records them too): a
# resumed run takes them from its command line, and comparisons of hyperparameters ignore them.
HOST_OPTIONS = frozenset({"run_dir", "resume", "quiet", "scores_csv", "wandb", "wandb_mode", "wandb_project",
                          "algorithm"})

# What each numeric option may be, by field name across the algorithms' Configs: a value outside its range
# is refused before anything is built (a zero batch size would otherwise surface as a NaN loss at step 2).
# A new numeric option gets a row here; tests/test_core.py checks that every algorithm's options have one.
_AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
_AT_LEAST_0 = ("at least 0", lambda v: v >= 0)
_POSITIVE = ("positive", lambda v: v > 0)
_IN_0_1 = ("in [0, 1]", lambda v: 0 <= v <= 1)
OPTION_RANGES = {
    **dict.fromkeys(("num_seeds", "chunk", "batch_size", "eval_episodes", "num_envs", "num_steps", "num_epochs",
                     "num_minibatches", "policy_freq", "cql_n_actions", "buffer_size", "update_every",
                     "num_critics", "eval_max_steps", "hidden_dims", "scan_unroll"), _AT_LEAST_1),
    # 0 switches a term off: alpha (TD3+BC) or beta (IQL) 0 is behaviour cloning, init_alpha 0 with
    # --no-autotune is SAC without the entropy bonus.
    **dict.fromkeys(("seed", "learning_starts", "bc_steps", "save_policy_every", "decay_steps", "env_threads",
                     "policy_noise", "noise_clip", "cql_alpha", "alpha_multiplier", "alpha", "beta", "init_alpha"),
                    _AT_LEAST_0),
    **dict.fromkeys(("actor_lr", "critic_lr", "value_lr", "policy_lr", "qf_lr", "alpha_lr", "lr", "max_weight",
                     "cql_temp", "max_grad_norm", "max_action"), _POSITIVE),
    **dict.fromkeys(("gamma", "lam", "eps_start", "eps_finish", "eps_decay", "sticky_actions"), _IN_0_1),
    "tau": ("in (0, 1]", lambda v: 0 < v <= 1),
    "expectile": ("in (0, 1)", lambda v: 0 < v < 1),
}
# Numeric options with no fixed range: steps checked against --chunk in start_run, signed or unbounded values.
OPTION_RANGES_EXEMPT = {"total_steps", "eval_every", "checkpoint_every", "cql_target_action_gap",
                        "cql_clip_diff_min", "cql_clip_diff_max"}


def check_option_ranges(config) -> None:
    """Refuse a numeric option outside its range (OPTION_RANGES) or NaN, naming the flag and what it may be."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers:
            continue
        flag = "--" + field.name.replace("_", "-")
        if any(v != v for v in numbers):
            raise RlzooError(f"{flag} is NaN; give it a number (--help lists every option with its default).")
        allowed, ok = OPTION_RANGES.get(field.name, ("", lambda v: True))
        if not all(ok(v) for v in numbers):
            each = "each entry " if isinstance(value, (tuple, list)) else ""
            shown = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else value
            raise RlzooError(f"{flag} {shown}: {each}must be {allowed} (--help lists every option with its "
                             "default).")


def start_run(config: RunConfig, algorithm: str, prepare: Callable[[RunConfig], object] | None = None) -> Run:
    """Validate the options, run `prepare(config)` (e.g. load the dataset, check the env id), then create
    (or reopen with --resume) the run directory: bad input never leaves an empty run directory behind."""
    if config.resume:
        run_dir = Path(config.resume)
        if not has_checkpoint(run_dir):
            raise RlzooError(
                f"--resume {config.resume}: no checkpoint found in {run_dir.resolve()}/checkpoints. Point "
                "--resume at the run directory printed at the start of an earlier run, or start a new run "
                "without --resume."
            )
        done = run_dir / "summary.json"
        if done.is_file():
            raise RlzooError(
                f"--resume {config.resume}: that run has finished (its final scores are in {done}); resuming it "
                "would only record the same scores a second time. Start a new run without --resume to train "
                "again. If its scores are missing from a scores CSV, add them with: python "
                f"benchmarks/record_run.py {config.resume}"
                + (f" --scores-csv {config.scores_csv}" if config.scores_csv else "")
            )
        saved = json.loads((run_dir / "config.json").read_text())
        if saved.get("algorithm", algorithm) != algorithm:  # config.json of runs before 2026-11-26 has none
            raise RlzooError(
                f"--resume {config.resume}: that directory holds a {saved['algorithm']} run, not {algorithm}. "
                f"Resume it with its own file (python algorithms/{saved['algorithm']}.py --resume "
                f"{config.resume}), or point --resume at a {algorithm} run directory."
            )
        fields = {f.name for f in dataclasses.fields(config)}
        # Hyperparameters come from the saved config; how this invocation reports comes from the CLI.
        keep = HOST_OPTIONS - {"run_dir"}  # the run directory is the saved one
        config = dataclasses.replace(config, **{k: v for k, v in saved.items() if k in fields and k not in keep})
        config = dataclasses.replace(config, resume=str(run_dir))
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = config.env.replace("/", "_")
        run_dir = Path(config.run_dir or f"runs/{algorithm}-{name}-{stamp}")
    check_option_ranges(config)
    for option in ("eval_every", "checkpoint_every", "total_steps"):
        value = getattr(config, option)
        if value <= 0 or value % config.chunk:
            raise RlzooError(f"--{option.replace('_', '-')} {value} must be a positive multiple of --chunk "
                             f"{config.chunk}; change one of them.")
    prepared = prepare(config) if prepare is not None else None
    if not config.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
    hold_run_dir(run_dir)
    if not config.resume:
        (run_dir / "config.json").write_text(json.dumps({**dataclasses.asdict(config), "algorithm": algorithm},
                                                        indent=2))
    seeds = list(range(config.seed, config.seed + config.num_seeds))
    print(f"[rlzoo] {algorithm} on {config.env}, seeds {seeds}, run dir {run_dir}")
    provenance.commit()  # cached now: results name the code this process started with, not HEAD at its end
    return Run(config, algorithm, run_dir, seeds, Checkpointer(run_dir), bool(config.resume), prepared)


def process_alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def hold_run_dir(run_dir: Path) -> None:
    """One process per run directory: a second one (a sweep or launch repeated while the first still runs)
    would interleave checkpoints and CSV rows. The claim, run.pid, is dropped when the process exits; one
    left by a killed process names a dead pid and is taken over."""
    lock = Path(run_dir) / "run.pid"
    try:
        holder = int(lock.read_text().strip())
    except (OSError, ValueError):
        holder = None
    if holder is not None and holder != os.getpid() and process_alive(holder):
        raise RlzooError(
            f"{run_dir} is in use by process {holder}, which is still running it. Wait for that process to "
            f"finish (or stop it: kill {holder}) before resuming; two processes in one run directory would "
            "overwrite each other's checkpoints."
        )
    lock.write_text(str(os.getpid()))

    def release() -> None:
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except OSError:
            pass

    atexit.register(release)


def import_script(path: str | Path, module_name: str):
    """Import a script that is not in a package (an algorithm file, a builder) by its path, once per module
    name. It is registered in sys.modules before it runs, because dataclasses look their module up there."""
    import importlib.util

    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


# Per-task settings: $RLZOO_CONFIGS, else the repository's configs/ (an editable install or a checkout), else
# the copy a regular install puts under <prefix>/share/rlzoo/configs (pyproject's data-files).
CONFIG_DIRS = [Path(__file__).resolve().parents[1] / "configs", Path(sys.prefix) / "share" / "rlzoo" / "configs"]


def find_configs_dir() -> Path:
    """Where configs/<algorithm>.toml are read from (the first of CONFIG_DIRS that exists, or $RLZOO_CONFIGS)."""
    if os.environ.get("RLZOO_CONFIGS"):
        return Path(os.environ["RLZOO_CONFIGS"])
    found = next((d for d in CONFIG_DIRS if d.is_dir()), None)
    if found is None:
        raise RlzooError(
            "rlzoo's per-task settings (configs/*.toml) are not installed: looked in "
            f"{', '.join(str(d) for d in CONFIG_DIRS)}. Reinstall rlzoo from its repository (pip install -e .), or "
            "point RLZOO_CONFIGS at the repository's configs/ folder."
        )
    return found


def task_settings(algorithm: str, env: str, fields: set[str], configs_dir: Path | None = None) -> dict:
    """Hyperparameters that configs/<algorithm>.toml sets for `env`: every table whose name (a glob over
    task names, e.g. "hopper-medium" or "antmaze-*") matches, later tables overriding earlier ones."""
    path = (configs_dir or find_configs_dir()) / f"{algorithm}.toml"
    if not path.is_file():
        return {}
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RlzooError(f"{path} is not valid TOML ({err}); fix the file or remove it.") from None
    # A Minari id of a D4RL-style dataset (mujoco/hopper/medium-v0, rlzoo-local/hopper/medium-v0) also matches
    # the tables of its alias (hopper-medium).
    names = [env]
    minari_id = re.fullmatch(r"[\w.-]+/([\w]+)/([\w-]+)-v\d+", env)
    if minari_id:
        names.append(f"{minari_id.group(1)}-{minari_id.group(2)}")
    settings = {}
    for pattern, values in tables.items():
        if not isinstance(values, dict):
            raise RlzooError(f"{path}: '{pattern}' must be a table ([task-pattern] followed by name = value lines)")
        unknown = sorted(set(values) - fields)
        if unknown:
            raise RlzooError(f"{path} [{pattern}] sets {', '.join(unknown)}, which {algorithm} has no option for; "
                             f"its options are {', '.join(sorted(fields))}.")
        if any(fnmatchcase(name, pattern) for name in names):
            settings.update({k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return settings


def task_defaults(config_cls: type, algorithm: str, configs_dir: Path | None = None) -> Callable:
    """For `run_cli`: the per-task settings of the task named by `--env` (or the default task) as the
    command line's defaults, so that `--help` shows them and explicit flags still override them."""

    def defaults(argv: list[str]):
        env = config_cls.env
        for i, arg in enumerate(argv):
            if arg == "--env" and i + 1 < len(argv):
                env = argv[i + 1]
            elif arg.startswith("--env="):
                env = arg.split("=", 1)[1]
        fields = {f.name for f in dataclasses.fields(config_cls)}
        settings = task_settings(algorithm, env, fields, configs_dir)
        if not settings:
            return None
        if not {"--resume", "--help", "-h"} & set(argv):
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            print(f"[rlzoo] per-task defaults for {env} from configs/{algorithm}.toml (flags override them): {shown}")
        return config_cls(**settings)

    return defaults


def seed_keys(seeds: list[int]) -> jax.Array:
    """One PRNG key per seed, stacked on a leading axis: the seed axis every state carries."""
    return jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, dtype=np.uint32))


def resume_state(run: Run, state, note: str = "", host_keys: tuple[str, ...] = ()) -> tuple[object, int, dict]:
    """`(state, start step, host state)`: the newest checkpoint's when resuming (`state` gives the structure),
    else `state` itself, step 0 and no host state. `note` is appended to the "resumed" line; `host_keys` are
    the host-state entries the run cannot continue without (e.g. the envs' emulator state)."""
    if not run.resuming:
        return state, 0, {}
    state, meta = run.checkpointer.restore(state)
    host = meta.get("host", {})
    missing = [key for key in host_keys if key not in host]
    if missing:
        raise RlzooError(
            f"--resume {run.run_dir}: its checkpoint at step {meta['step']} holds no {', '.join(missing)} state "
            "(it was written by an older rlzoo), so the run cannot continue where it stopped. Start a new run "
            "without --resume; the old run's logs and checkpoints stay in place."
        )
    print(f"[rlzoo] resumed at step {meta['step']}{note}")
    return state, meta["step"], host


def make_logger(run: Run, score_name: str, start_step: int, extra_config: dict | None = None) -> RunLogger:
    """The run's progress bar, CSVs and optional wandb run, named `<algorithm>-<env>`; `extra_config` (e.g. the
    dataset's summary) is recorded beside the hyperparameters."""
    cfg = run.config
    return RunLogger(run.run_dir, f"{run.algorithm}-{cfg.env}", cfg.num_seeds, run.seeds, cfg.total_steps,
                     start_step, score_name, config={**dataclasses.asdict(cfg), **(extra_config or {})},
                     use_wandb=cfg.wandb, wandb_project=cfg.wandb_project, wandb_mode=cfg.wandb_mode,
                     quiet=cfg.quiet)


def save_policy(run: Run, params, **meta) -> None:
    """The final policy parameters as `<run dir>/policy.npz`, with the env, seeds, step and algorithm (and
    `meta`) beside them: what `envs/` builders and evaluation scripts load."""
    save_params(run.run_dir / "policy.npz", params,
                meta={"env": run.config.env, **meta, "seeds": run.seeds, "step": run.config.total_steps,
                      "algorithm": run.algorithm})


def _last_good_checkpoint(run: Run) -> str:
    last = run.checkpointer.latest_step()
    return (f"the last good checkpoint (step {last}) is kept in {run.checkpointer.directory}; resume from it "
            f"with --resume {run.run_dir}") if last is not None else "no checkpoint had been written yet"


def _check_finite(metrics: dict[str, np.ndarray], first_step: int, seeds: list[int], run: Run) -> None:
    """Stop with the step, loss and seed of the first NaN/inf (the last good checkpoint stays).

    A metric with K entries per seed in a chunk of `chunk` steps has one entry per chunk/K steps (one per
    gradient step offline; one per rollout of many env steps for PQN); its k-th entry is dated at the end
    of its share of the chunk."""
    first = None  # (step, seed index, loss name, entry index) of the earliest non-finite value
    for name, values in sorted(metrics.items()):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            seed_idx, k = bad[np.argmin(bad[:, 1])]
            step = first_step + -(-(int(k) + 1) * run.config.chunk // values.shape[1])
            if first is None or step < first[0]:
                first = (step, int(seed_idx), name, int(k))
    if first is None:
        return
    step, seed_idx, name, k = first
    kept = _last_good_checkpoint(run)
    raise NonFiniteLossError(
        f"training stopped: loss '{name}' became {metrics[name][seed_idx, k]} at step {step} "
        f"(seed {seeds[seed_idx]}); {kept}. Lower the learning rate or check the data for extreme values "
        "before resuming."
    )


@jax.jit
def _all_finite(state) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.bool_(True)


def _check_state_finite(state, step: int, run: Run) -> None:
    """The losses are those before each update, so the last update of a chunk can leave NaN parameters behind
    finite losses: check the state itself before it is saved as a good checkpoint."""
    if bool(_all_finite(state)):
        return
    kept = _last_good_checkpoint(run)
    raise NonFiniteLossError(
        f"training stopped: the parameters became NaN/inf by step {step} (the losses reported up to then were "
        f"finite); it was not saved, and {kept}. Lower the learning rate or check the data for extreme values "
        "before resuming."
    )


def train_loop(
    run: Run,
    state,
    chunk: Callable,
    evaluate: Callable,
    logger: RunLogger,
    start_step: int = 0,
    host_state: Callable[[], dict] | None = None,
):
    """Advance `state` chunk by chunk to `total_steps`, evaluating, logging and checkpointing."""
    cfg = run.config
    step = start_step
    # Training time carried across resumes (up to the checkpoint a resumed run continues from).
    t_start, before = time.perf_counter(), float(run.checkpointer.restored_meta.get("wall_s", 0.0))
    meta = lambda: {"step": step, "host": host_state() if host_state else {},
                    "wall_s": before + time.perf_counter() - t_start, "commits": run_commits(run)}
    while step < cfg.total_steps:
        state, metrics = chunk(state)
        metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, step, run.seeds, run)
        step += cfg.chunk
        logger.log_train(step, {k: v.mean(axis=-1) for k, v in metrics.items()})
        if step % cfg.eval_every == 0 or step == cfg.total_steps:
            returns, scores = evaluate(state)
            logger.log_eval(step, returns, scores)
        if step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
            _check_state_finite(state, step, run)
            run.checkpointer.save(step, state, meta())
        logger.advance(step)
    run.checkpointer.wait()
    return state


def final_scores(eval_csv: Path, seeds: list[int], last_n: int = 1) -> dict[int, float]:
    """Mean of each seed's last `last_n` evaluation scores."""
    data = np.atleast_1d(np.genfromtxt(eval_csv, delimiter=",", names=True))
    return {s: float(data["score"][data["seed"] == s][-last_n:].mean()) for s in seeds}


def run_commits(run: Run) -> list[str]:
    """The commits of every process that trained this run, in order ("unknown" for earlier processes whose
    checkpoint predates this record): a run resumed across commits ran the code of each."""
    meta = run.checkpointer.restored_meta
    earlier = meta.get("commits", ["unknown"] if meta else [])
    return list(dict.fromkeys([*earlier, provenance.commit()]))


def finish(run: Run, logger: RunLogger, score_name: str, task: str, data_source: str, wall_s: float) -> dict:
    """Print one line per seed and write summary.json (benchmarks record results from it)."""
    logger.close()
    run.checkpointer.close()
    wall_s += float(run.checkpointer.restored_meta.get("wall_s", 0.0))  # earlier processes
    scores = final_scores(run.run_dir / "eval.csv", run.seeds)
    commits = run_commits(run)
    info = {**provenance.info(), "commit": ";".join(commits), "commits": commits}
    for seed, score in scores.items():
        print(f"[rlzoo] {run.algorithm} {task} seed {seed}: final {score_name} {score:.2f}")
    summary = {"algorithm": run.algorithm, "task": task, "data_source": data_source, "score_name": score_name,
               "final_scores": scores, "steps": run.config.total_steps, "wall_s": wall_s,
               "steps_per_s": logger.steps_per_second(), **info}
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def shard_seeds(state, data=None):
    """Spread the seed axis over the local devices when there are several and they divide the seeds;
    `data` (shared by all seeds) is replicated. On one device this returns its inputs unchanged."""
    devices = jax.local_devices()
    num_seeds = jax.tree_util.tree_leaves(state)[0].shape[0]
    if len(devices) == 1 or num_seeds % len(devices):
        return state, data
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("seed",))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec("seed")))
    if data is not None:
        data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
    print(f"[rlzoo] {num_seeds} seeds sharded over {len(devices)} devices")
    return state, data
