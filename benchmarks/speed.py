"""Steady-state update throughput of an algorithm file's real update, seeds vmapped, on synthetic data.

    python -m benchmarks.speed --algorithm iql --num-seeds 1 --updates 1000 --repeats 5
    python -m benchmarks.speed --algorithm sac --num-seeds 4 --updates 1000 --out /tmp/speed.csv
    python -m benchmarks.speed --algorithm iql --updates 1000 \
        --baseline-name corl-iql-torch2.13-cpu-1thread --baseline-value 40  # see corl_baseline.md
    python -m benchmarks.speed --algorithm pqn --num-seeds 10 --updates 10   # env steps/s, MinAtar
    # before/after A/B in one run: the same settings timed in this checkout and in another, rounds interleaved
    python -m benchmarks.speed --algorithm iql td3_bc cql sac pqn --against /path/to/old/checkout --rounds 5
    # the extra cost of classification value heads (rlzoo.heads): each head against mse, rounds interleaved
    python -m benchmarks.speed --algorithm iql td3_bc cql sac pqn --compare-heads two_hot hl_gauss --rounds 3

What is timed is exactly what training runs: `algorithms.<name>` is imported, its `Config`,
`init_state` and `make_train` are used as its `main` uses them, seeds are `jax.vmap`ped, and one call is
one jitted `lax.scan` of K updates with the batch sampled on the device. Data is synthetic with the
shapes of HalfCheetah (obs 17, act 6): a 1M-row dataset for offline algorithms (`make_train(config)` ->
`train_chunk(state, data)`), or, for replay-based online algorithms (`make_train(config, act_dim)` ->
`(act, learn)`, e.g. SAC), a replay buffer filled with `buffers.replay_add`; each timed `learn` call then
adds a block of K transitions and runs K scanned updates (no env steps, no acting).
PQN (`make_minatar`) is timed on a real gymnax MinAtar env (--env, default Breakout-MinAtar) with its
paper defaults: one call is its jitted, seed-vmapped `train_chunk` of --updates rollouts (128 envs x 32
steps each: acting, env steps, lambda-returns, 2 epochs x 32 minibatch updates), reported in env steps/s
summed over seeds (see purejaxql_baseline.md for the reference implementation's number). `pqn_atari`
with an Atari --env (e.g. --env Breakout) times PQN's Atari chunk on the real ale-py env, with the env inside
the jit (--atari-xla, ale-py's XLA interface) or stepped from the host (--no-atari-xla).

The first call (trace + compile + one run) is reported separately from the steady state (median of
--repeats calls, each blocked until its outputs are ready). In the same run it measures a plain float32
matmul's GFLOP/s and takes the FLOPs of one update from XLA's cost analysis, so the achieved GFLOP/s can
be read as a fraction of what a matmul reaches on this machine. One row is appended to --out (the
results/speed.csv schema of shared DESIGN.md plus extra columns at the end) and one line is printed.

With --against CHECKOUT, nothing is timed in this process: each of --rounds rounds times every algorithm
once in this checkout and once in CHECKOUT (the order alternating from round to round, so that a machine's
drift falls on both), each time in a fresh subprocess with PYTHONPATH and the working directory set to
that checkout and the same flags. A checkout whose benchmarks/ is a package runs `python -m
benchmarks.speed`, an older one (before issue 31, e.g. c2a6f9c) `python benchmarks/speed.py`; both take
the flags used. Per algorithm two rows go to --out: the other checkout's (its own commit, the median over
rounds) and this checkout's, with `baseline` = <other commit>=<its value> and `ratio_to_baseline`.
--value-head times an algorithm with that head (--num-bins bins; offline and SAC on a fixed support, PQN on
its default one); --compare-heads H... times, in the same way as --against, each algorithm with the mse head
and with each H, and writes the mse row and one row per H with `baseline` = mse=<its value>.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from functools import partial
from pathlib import Path

from benchmarks.launch import ROOT, algorithm_module
from rlzoo.errors import RlzooError

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
HEADS = ("mse", "two_hot", "hl_gauss")
COLUMNS = ["benchmark", "algorithm", "device", "num_seeds", "batch_size", "unit", "value", "baseline",
           "ratio_to_baseline", "commit", "date", "jax",
           "compile_s", "flops_per_update", "gflops_achieved", "matmul_gflops", "fraction_of_matmul", "notes"]
SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algorithm", nargs="+", required=True,
                   help="names of algorithms/<name>.py (e.g. iql sac), timed one after another")
    p.add_argument("--num-seeds", type=int, default=1, help="seeds vmapped in one program")
    p.add_argument("--updates", type=int, default=1000,
                   help="updates per seed per timed call (scan length); PQN: rollouts per call")
    p.add_argument("--env", default="Breakout-MinAtar",
                   help="PQN only: a MinAtar game (pqn) or an Atari game (pqn_atari)")
    p.add_argument("--atari-xla", action=argparse.BooleanOptionalAction, default=True,
                   help="PQN on Atari: ale-py inside the jit (its XLA interface) or stepped from the host")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scan-unroll", type=int, default=1,
                   help="offline algorithms: updates per iteration of the chunk's scan (Config.scan_unroll)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the first (compiling) one")
    p.add_argument("--record", action="store_true",
                   help="append the rows to results/speed.csv (without it, or --out, they are only printed)")
    p.add_argument("--out", default="", help="CSV to append the rows to instead ('' or - for none)")
    p.add_argument("--baseline-name", default="", help="e.g. corl-iql-torch-cpu-1thread (measured apart)")
    p.add_argument("--baseline-value", type=float, default=None, help="the baseline's updates/s")
    p.add_argument("--dataset-size", type=int, default=1_000_000, help="rows of the synthetic offline data")
    p.add_argument("--replay-fill", type=int, default=None,
                   help="rows written into each seed's replay before timing (default: the whole buffer)")
    p.add_argument("--matmul-size", type=int, default=1024, help="n of the n x n @ n x n reference matmul")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--value-head", default="mse", choices=HEADS, help="the algorithm's value head (rlzoo.heads)")
    p.add_argument("--num-bins", type=int, default=101, help="bins of a classification value head")
    p.add_argument("--num-critics", type=int, default=None,
                   help="Q-ensemble size of an algorithm that has one (riql, ravl); default: the algorithm's")
    p.add_argument("--compare-heads", nargs="+", default=[], choices=HEADS[1:],
                   help="time each algorithm with mse and with these heads, rounds interleaved (see --rounds)")
    p.add_argument("--xla-multithread", action="store_true",
                   help="leave XLA's CPU intra-op threading on (RLZOO_CPU_THREADS=1 before importing rlzoo)")
    p.add_argument("--num-devices", type=int, default=None,
                   help="spread the seeds over this many devices (on CPU: the processor split into as many XLA "
                        "devices, as an algorithm's --num-devices does); seeds that do not divide are padded")
    p.add_argument("--pin-cores", default="",
                   help="comma-separated CPU cores to run on (os.sched_setaffinity before JAX starts; XLA's threads "
                        "inherit it), e.g. 0 to time one core alone")
    p.add_argument("--against", default="",
                   help="another checkout of this repository (e.g. the commit before a refactor): time both, "
                        "rounds interleaved, each call in a subprocess, and record this one's ratio to it")
    p.add_argument("--rounds", type=int, default=3, help="with --against: rounds, each timing both checkouts")
    args = p.parse_args(argv)
    if min(args.num_seeds, args.updates, args.repeats, args.batch_size, args.rounds, args.num_devices or 1) < 1:
        p.error("--num-seeds, --updates, --repeats, --batch-size, --rounds and --num-devices must be positive")
    if (args.baseline_value is None) != (not args.baseline_name):
        p.error("--baseline-name and --baseline-value go together")
    if args.baseline_value is not None and args.baseline_value <= 0:
        p.error("--baseline-value must be positive")
    if args.against and args.baseline_name:
        p.error("--against measures its own baseline; leave out --baseline-name and --baseline-value")
    if args.record:
        if args.out:
            p.error("--record writes results/speed.csv; leave out --out")
        args.out = str(ROOT / "results" / "speed.csv")
    return args


def pin_cores(spec: str) -> None:
    """Keep this process (and the threads XLA starts later) on the comma-separated cores of `spec`, e.g. "0"."""
    if spec:
        os.sched_setaffinity(0, {int(c) for c in spec.split(",")})


def synthetic_transitions(key, n: int, lead: tuple[int, ...] = ()) -> dict:
    """HalfCheetah-shaped float32 transitions (the keys and dtypes of `Dataset.transitions()`)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def make(key):
        k_obs, k_next, k_act, k_rew, k_done = jax.random.split(key, 5)
        shape = (*lead, n)
        return {
            "observations": jax.random.normal(k_obs, (*shape, OBS_DIM), jnp.float32),
            "actions": jax.random.uniform(k_act, (*shape, ACT_DIM), jnp.float32, -1.0, 1.0),
            "rewards": jax.random.normal(k_rew, shape, jnp.float32),
            "next_observations": jax.random.normal(k_next, (*shape, OBS_DIM), jnp.float32),
            "dones": (jax.random.uniform(k_done, shape) < 1e-3).astype(jnp.float32),
        }

    return make(key)


def xla_flops(jitted, *args) -> float:
    """FLOPs of the compiled program, from XLA's cost analysis (NaN where the backend gives none)."""
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def time_calls(call, state, repeats: int):
    """(first call seconds, [steady call seconds]); `call(state) -> (state, out)`, donated state threaded."""
    import jax

    t0 = time.perf_counter()
    state, out = call(state)
    jax.block_until_ready((state, out))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, out = call(state)
        jax.block_until_ready((state, out))
        times.append(time.perf_counter() - t0)
    return first, times, state


def head_options(args, support: bool = True) -> dict:
    """Config options of --value-head: none for mse; else the head, its bins and (offline, SAC) a fixed support
    (its bounds change no cost)."""
    if args.value_head == "mse":
        return {}
    return {"value_head": args.value_head, "num_bins": args.num_bins,
            **({"v_min": -100.0, "v_max": 1000.0} if support else {})}


def is_offline(mod) -> bool:
    """An offline algorithm's `make_train(config)` returns `train_chunk(states, data)`; a replay-based online
    one's `make_train(config, act_dim)` returns (act, learn)."""
    return hasattr(mod, "make_train") and "act_dim" not in inspect.signature(mod.make_train).parameters


def is_model_based(mod) -> bool:
    """A model-based offline algorithm's `make_train(config, dataset, model=None)` takes the dataset (whose
    dynamics model it trains) and optionally the model itself."""
    return "model" in inspect.signature(mod.make_train).parameters


def ensemble_options(mod, args) -> dict:
    """--num-critics for an algorithm with a Q-ensemble (a `num_critics` option); refused for the others."""
    if args.num_critics is None:
        return {}
    if "num_critics" not in {f.name for f in dataclasses.fields(mod.Config)}:
        raise RlzooError(f"{Path(mod.__file__).stem} has no Q-ensemble option (num_critics): leave out --num-critics")
    return {"num_critics": args.num_critics}


def model_based_train(mod, config, data: dict):
    """`make_train(config, dataset, model)` on the synthetic data: a HalfCheetah-shaped OfflineDataset of it and
    a dynamics ensemble of the default size fitted for one epoch on its first 5000 rows (what is timed is the
    agent's updates and the model's rollouts, whose cost does not depend on how well the model fits)."""
    import numpy as np

    from rlzoo import datasets, dynamics

    rows = {k: np.asarray(v) for k, v in data.items()}
    n = len(rows["rewards"])
    dataset = datasets.OfflineDataset(
        name="synthetic", source="synthetic", dataset_ids=[], env_id="HalfCheetah-v5",
        observations=rows["observations"], actions=rows["actions"], rewards=rows["rewards"],
        next_observations=rows["next_observations"], terminals=rows["dones"], timeouts=np.zeros(n, np.float32),
        episode_returns=np.zeros(1, np.float32), episode_complete=np.ones(1, bool), ref_min_score=None,
        ref_max_score=None)
    m = slice(0, 5000)
    model, _ = dynamics.fit(rows["observations"][m], rows["actions"][m], rows["rewards"][m],
                            rows["next_observations"][m], dynamics.DynamicsConfig(max_epochs=1), progress=False)
    return mod.make_train(config, dataset, model=model)


def offline_setup(mod, args, keys):
    """(config, jitted train_chunk, seeds' state, synthetic data) of an offline algorithm, as its `main` builds
    them: --num-seeds seeds, --updates updates per call."""
    import jax

    from rlzoo.devices import shard_seeds

    if not is_offline(mod):
        raise RlzooError(f"{Path(mod.__file__).stem} is not an offline algorithm (make_train(config) -> "
                         "train_chunk); use one of iql, td3_bc, cql, riql, ravl")
    config = mod.Config(num_seeds=args.num_seeds, chunk=args.updates, batch_size=args.batch_size,
                        scan_unroll=args.scan_unroll, **head_options(args), **ensemble_options(mod, args))
    data = synthetic_transitions(jax.random.PRNGKey(args.seed + 12345), args.dataset_size)
    train = model_based_train(mod, config, data) if is_model_based(mod) else mod.make_train(config)
    state = jax.vmap(partial(mod.init_state, config, obs_dim=OBS_DIM, act_dim=ACT_DIM))(keys)
    state, data = shard_seeds(state, data)
    return config, train, state, data


def bench_offline(mod, args, keys, notes: list[str]):
    """`make_train(config)` -> jitted `train_chunk(states, data)`: one call = K updates per seed."""
    import jax

    config, train_chunk, state, data = offline_setup(mod, args, keys)
    first, times, state = time_calls(lambda s: train_chunk(s, data), state, args.repeats)
    # XLA's cost analysis counts a while-loop body once whatever its trip count, so the FLOPs of one
    # update come from the same program built with a 1-update scan.
    # One update may take several gradient steps (TD3+BC: policy_freq critic steps per actor step).
    steps_per_update = getattr(config, "policy_freq", 1)
    if hasattr(config, "num_critics"):
        notes.append(f"Q-ensemble of {config.num_critics} critics")
    if is_model_based(mod):  # a chunk is whole epochs (rollouts + rollout_every updates): FLOPs not counted
        notes.append(f"each call {args.updates} updates with their "
                     f"model rollouts ({config.rollout_batch} x {config.rollout_length} steps every "
                     f"{config.rollout_every} updates); flops not counted")
        return first, times, float("nan")
    one = mod.make_train(mod.Config(num_seeds=args.num_seeds, chunk=steps_per_update, batch_size=args.batch_size,
                                    **head_options(args), **ensemble_options(mod, args)))
    # Sharded over several devices, the cost analysis describes one device's share of the (padded) seeds.
    devices = len(jax.tree_util.tree_leaves(state)[0].sharding.device_set)
    padded = jax.tree_util.tree_leaves(state)[0].shape[0]
    flops = xla_flops(one, state, data) / (padded / devices) / steps_per_update
    notes.append(f"seeds over {devices} device(s)" + (f", padded to {padded}" if padded != args.num_seeds else ""))
    notes.append(f"synthetic dataset {args.dataset_size} rows (obs {OBS_DIM}, act {ACT_DIM}) on device; "
                 f"scan unroll {config.scan_unroll}; "
                 "call = make_train(config)(states, data), batch sampled in the scan")
    return first, times, flops


def bench_replay(mod, args, keys, notes: list[str]):
    """`make_train(config, act_dim)` -> (act, learn); one call = learn(states, K new transitions, True)."""
    import jax

    from rlzoo import buffers

    config = mod.Config(num_seeds=args.num_seeds, batch_size=args.batch_size, **head_options(args))
    state = jax.vmap(partial(mod.init_state, config, obs_dim=OBS_DIM, act_dim=ACT_DIM))(keys)
    capacity = jax.tree_util.tree_leaves(state["replay"].data)[0].shape[1]  # leaves are [seeds, capacity, ...]
    fill = capacity if args.replay_fill is None else min(args.replay_fill, capacity)
    if fill > 0:
        rows = synthetic_transitions(jax.random.PRNGKey(args.seed + 12345), fill)
        add = jax.jit(jax.vmap(buffers.replay_add, in_axes=(0, None)), donate_argnums=0)
        state = {**state, "replay": add(state["replay"], rows)}
        del rows
    _, learn = mod.make_train(config, ACT_DIM)
    block = synthetic_transitions(jax.random.PRNGKey(args.seed + 777), args.updates, (args.num_seeds,))
    first, times, state = time_calls(lambda s: learn(s, block, True), state, args.repeats)
    one = synthetic_transitions(jax.random.PRNGKey(args.seed + 778), 1, (args.num_seeds,))
    flops = xla_flops(learn, state, one, True) / args.num_seeds
    notes.append(f"replay capacity {capacity} filled with {fill} synthetic rows via buffers.replay_add; "
                 f"call = learn(states, {args.updates} new transitions, True): replay_add of the block "
                 f"(cheap) + {args.updates} scanned updates, no env steps or acting")
    return first, times, flops


def bench_pqn(mod, args, keys, notes: list[str]):
    """PQN on MinAtar: one call = `jit(vmap(train_chunk))` over seeds, --updates rollouts each."""
    import jax

    from rlzoo.devices import shard_seeds

    probe = mod.Config(env=args.env)
    rollout = probe.num_envs * probe.num_steps
    config = mod.Config(env=args.env, num_seeds=args.num_seeds, chunk=args.updates * rollout,
                        total_steps=10 * args.updates * rollout, **head_options(args, support=False))
    _, init, train_chunk, _ = mod.make_minatar(config)
    state, _ = shard_seeds(jax.jit(jax.vmap(init))(keys))
    chunk = jax.jit(jax.vmap(train_chunk), donate_argnums=0)
    first, times, state = time_calls(chunk, state, args.repeats)
    notes.append(f"{args.env} (gymnax), paper defaults: {config.num_envs} envs x {config.num_steps} steps per "
                 f"rollout, {config.num_epochs} epochs x {config.num_minibatches} minibatches; call = "
                 f"jit(vmap(train_chunk)) of {args.updates} rollouts ({config.chunk} env steps per seed): acting, "
                 "env steps, lambda-returns and updates; no evaluation; flops not counted (nested scans)")
    minibatch = rollout // config.num_minibatches
    return first, times, float("nan"), config.chunk, "env_steps/s", minibatch


def bench_pqn_atari(mod, args, keys, notes: list[str]):
    """PQN on Atari (ale-py): one call = --updates rollouts of the real env, host-stepped or inside the jit."""
    import jax
    import numpy as np

    config = mod.Config(env=args.env, num_seeds=args.num_seeds, atari_xla=args.atari_xla)
    rollout = config.num_envs * config.num_steps
    config = mod.Config(env=args.env, num_seeds=args.num_seeds, atari_xla=args.atari_xla,
                        chunk=args.updates * rollout, total_steps=10 * args.updates * rollout,
                        **head_options(args, support=False))
    game = mod.check_config(config)
    envs, network, learn, act_all, eps_schedule, dims = mod.make_atari(config, game, args.num_seeds)
    state = jax.jit(jax.vmap(lambda k: mod.init_state(config, network, k, envs.obs_shape)))(keys)
    n = envs.num_envs
    host = {"obs": envs.reset(seed=args.seed), "ep_return": np.zeros(n, np.float32),
            "last_return": np.zeros(n, np.float32)}
    make_chunk = mod.atari_xla_chunk if args.atari_xla else mod.atari_host_chunk
    chunk = make_chunk(config, envs, learn, act_all, eps_schedule, dims, host)
    first, times, state = time_calls(chunk, state, args.repeats)
    envs.close()
    notes.append(f"{args.env} (ale-py AtariVectorEnv, {n} games, threads {config.env_threads or 'auto'}), paper "
                 f"Atari defaults: {config.num_envs} envs x {config.num_steps} steps, {config.num_epochs} epochs x "
                 f"{config.num_minibatches} minibatches, Nature CNN + LayerNorm; env "
                 + ("inside the jit (ale-py XLA interface)" if args.atari_xla else "stepped from the host, one "
                    "jitted policy call per vector step") + f"; call = {args.updates} rollouts; frames = 4 x env steps")
    return first, times, float("nan"), config.chunk, "env_steps/s", rollout // config.num_minibatches


def matmul_gflops(n: int, repeats: int) -> float:
    """Median GFLOP/s of a jitted float32 n x n @ n x n matmul; with several local devices, one such matmul
    per device in one sharded call, summed: what those devices reach together."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    one_per_device = NamedSharding(Mesh(np.asarray(devices), ("d",)), PartitionSpec("d"))
    a = jax.device_put(jax.random.normal(ka, (len(devices), n, n), jnp.float32), one_per_device)
    b = jax.device_put(jax.random.normal(kb, (len(devices), n, n), jnp.float32), one_per_device)
    f = jax.jit(jax.vmap(lambda a, b: a @ b))
    for _ in range(2):
        f(a, b).block_until_ready()
    times = []
    for _ in range(max(repeats, 10)):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return len(devices) * 2.0 * n**3 / statistics.median(times) / 1e9


def append_row(path: Path, row: dict) -> None:
    """Append `row`; a file whose header lacks some columns is rewritten with the union of both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(COLUMNS)
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            old_header = list(reader.fieldnames or [])
            old_rows = list(reader)
        header = old_header + [c for c in COLUMNS if c not in old_header]
        if header != old_header:
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, header)
                writer.writeheader()
                writer.writerows(old_rows)
        with path.open("a", newline="") as f:
            csv.DictWriter(f, header).writerow(row)
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, header)
            writer.writeheader()
            writer.writerow(row)


def setup_process(args) -> tuple:
    """Before JAX starts: cores, XLA threading; returns (load average, XLA_FLAGS as rlzoo set them)."""
    if args.xla_multithread:
        os.environ["RLZOO_CPU_THREADS"] = "1"
    pin_cores(args.pin_cores)
    load = os.getloadavg()
    # The CPU XLA_FLAGS every algorithm's command line sets, before jax's backend starts.
    from rlzoo.devices import configure_cpu

    configure_cpu(args.num_devices)

    warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
    return load, os.environ.get("XLA_FLAGS", "")


def time_algorithm(name: str, args, notes: list[str]) -> tuple:
    """(first call s, steady call s list, flops per update, work per call, unit, batch size, what) of one
    algorithm, timed in this process as its training runs it."""
    from rlzoo.devices import seed_keys

    mod = algorithm_module(name)
    keys = seed_keys(list(range(args.seed, args.seed + args.num_seeds)))
    if name in ("pqn", "pqn_atari"):
        return (*(bench_pqn_atari if name == "pqn_atari" else bench_pqn)(mod, args, keys, notes), "env steps")
    bench = bench_offline if is_offline(mod) else bench_replay
    first, times, flops = bench(mod, args, keys, notes)
    return first, times, flops, args.updates, "updates/s", args.batch_size, "updates"


def measure(name: str, args, load: tuple, xla_flags: str) -> dict:
    """Time one algorithm and return its results/speed.csv row (also appended to --out and printed)."""
    import jax

    from rlzoo import provenance

    platform = jax.devices()[0].platform
    single = SINGLE_THREAD_FLAG in xla_flags
    notes = [f"XLA CPU single-thread flags {'on' if single else 'off'}"
             + ("" if platform == "cpu" else f" (unused on {platform})") + f" (XLA_FLAGS='{xla_flags}')"]
    if args.value_head != "mse":
        notes.append(f"value head {args.value_head} ({args.num_bins} bins)")
    first, times, flops, work, unit, batch_size, what = time_algorithm(name, args, notes)
    median = statistics.median(times)
    value = args.num_seeds * work / median
    compile_s = max(first - median, 0.0)
    mm = matmul_gflops(args.matmul_size, args.repeats)
    achieved = flops * value / 1e9
    per_seed = [work / t for t in times]
    notes += [
        f"steady = median of {args.repeats} calls x {work} {what} x {args.num_seeds} seeds "
        f"(per-seed {unit} min {min(per_seed):.1f} max {max(per_seed):.1f})",
        f"compile_s = first call {first:.2f}s minus one steady call",
        f"matmul {args.matmul_size}^2 float32 jitted, median",
        *([] if name in ("pqn", "pqn_atari") else [
            "flops_per_update from XLA cost_analysis of the same function built with a 1-update scan, / seeds "
            "(XLA counts a while-loop body once)"]),
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores",
        f"CPU {provenance.cpu_signature()}",
        *([f"pinned to cores {args.pin_cores} (sched_setaffinity)"] if args.pin_cores else []),
    ]
    info = provenance.info()
    ratio = value / args.baseline_value if args.baseline_value else None
    row = {
        "benchmark": "env_throughput" if unit == "env_steps/s" else "update_throughput",
        "algorithm": name, "device": info["device"], "num_seeds": args.num_seeds, "batch_size": batch_size,
        "unit": unit, "value": f"{value:.2f}",
        "baseline": f"{args.baseline_name}={args.baseline_value:g}" if args.baseline_name else "",
        "ratio_to_baseline": f"{ratio:.3f}" if ratio is not None else "",
        "commit": info["commit"], "date": info["date"], "jax": info["jax"], "compile_s": f"{compile_s:.2f}",
        "flops_per_update": f"{flops:.4g}", "gflops_achieved": f"{achieved:.2f}", "matmul_gflops": f"{mm:.2f}",
        "fraction_of_matmul": f"{achieved / mm:.3f}", "notes": "; ".join(notes),
    }
    if args.out and args.out != "-":
        append_row(Path(args.out), row)
    vs = f", {ratio:.2f}x {args.baseline_name}" if ratio is not None else ""
    print(f"[speed] {name} x{args.num_seeds} seeds, batch {batch_size}, {work} {what}/call on {info['device']}: "
          f"{value:.1f} {unit} total ({value / args.num_seeds:.1f}/seed{vs}); compile {compile_s:.1f}s; "
          f"{flops / 1e9:.3f} GFLOP/update -> {achieved:.1f} GFLOP/s = {achieved / mm:.2f} of a "
          f"{args.matmul_size}^2 matmul ({mm:.1f} GFLOP/s); XLA single-thread {'on' if single else 'off'}; "
          f"load {load[0]:.2f}" + (f"; row appended to {args.out}" if args.out and args.out != "-" else ""),
          flush=True)
    return row


# ------------------------------------------------------------------------------- A/B against another checkout


def shared_flags(args) -> list[str]:
    """This run's settings as flags that this speed.py and the pre-issue-31 one (c2a6f9c) both accept."""
    flags = ["--num-seeds", str(args.num_seeds), "--updates", str(args.updates), "--env", args.env,
             "--atari-xla" if args.atari_xla else "--no-atari-xla", "--batch-size", str(args.batch_size),
             "--scan-unroll", str(args.scan_unroll), "--repeats", str(args.repeats),
             "--dataset-size", str(args.dataset_size), "--matmul-size", str(args.matmul_size), "--seed", str(args.seed)]
    flags += ["--replay-fill", str(args.replay_fill)] if args.replay_fill is not None else []
    flags += ["--pin-cores", args.pin_cores] if args.pin_cores else []
    return flags + (["--xla-multithread"] if args.xla_multithread else [])


def check_checkout(checkout: Path, algorithms: list[str]) -> None:
    """The other checkout must hold a speed.py and every algorithm file timed."""
    missing = [p for p in ["benchmarks/speed.py", *(f"algorithms/{a}.py" for a in algorithms)]
               if not (checkout / p).is_file()]
    if missing:
        raise RlzooError(
            f"--against {checkout}: that is not a checkout of this repository with what this run times (missing "
            f"{', '.join(missing)}). Point --against at a checkout (e.g. git worktree add /tmp/old <commit>) whose "
            "benchmarks/speed.py and algorithms/ hold those algorithms."
        )


def time_in_checkout(checkout: Path, algorithm: str, args, extra: tuple[str, ...] = ()) -> dict:
    """One subprocess timing `algorithm` with this run's settings in `checkout` (its own rlzoo, algorithms and
    speed.py: PYTHONPATH and working directory set to it); returns the row it wrote."""
    entry = ["-m", "benchmarks.speed"] if (checkout / "benchmarks" / "__init__.py").is_file() else [
        "benchmarks/speed.py"]
    env = {k: v for k, v in os.environ.items() if k != "RLZOO_COMMIT"}  # each child names its own commit
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.csv"
        cmd = [sys.executable, *entry, "--algorithm", algorithm, *shared_flags(args), *extra, "--out", str(out)]
        proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise RlzooError(f"timing {algorithm} in {checkout} failed (exit {proc.returncode}): {tail} "
                             f"Command: {' '.join(cmd)}")
        with out.open(newline="") as f:
            return list(csv.DictReader(f))[-1]


def ab_rows(algorithm: str, here: list[dict], other: list[dict], checkout: Path) -> list[dict]:
    """The other checkout's row and this one's (baseline = the other's commit and value), medians over rounds."""
    def median_row(rows: list[dict]) -> dict:
        values = [float(r["value"]) for r in rows]
        row = min(rows, key=lambda r: abs(float(r["value"]) - statistics.median(values)))
        return {**row, "value": f"{statistics.median(values):.2f}", "notes": (
            f"same-run A/B, {len(rows)} interleaved rounds in subprocesses, value = median of "
            f"{', '.join(f'{v:.1f}' for v in values)}; " + row["notes"])}

    base, mine = median_row(other), median_row(here)
    base["notes"] = f"A/B baseline: checkout {checkout}; " + base["notes"]
    mine["baseline"] = f"{base['commit']}={base['value']}"
    mine["ratio_to_baseline"] = f"{float(mine['value']) / float(base['value']):.3f}"
    return [base, mine]


def against(args) -> list[dict]:
    """--rounds rounds of every algorithm in this checkout and in --against, order alternating by round."""
    checkout = Path(args.against).expanduser().resolve()
    check_checkout(checkout, args.algorithm)
    timed = {(a, side): [] for a in args.algorithm for side in ("here", "other")}
    for r in range(args.rounds):
        for algorithm in args.algorithm:
            for side in (("here", "other") if r % 2 == 0 else ("other", "here")):
                row = time_in_checkout(ROOT if side == "here" else checkout, algorithm, args)
                timed[(algorithm, side)].append(row)
                print(f"[speed] round {r + 1}/{args.rounds} {algorithm} in {row['commit']} ({side}): "
                      f"{float(row['value']):.1f} {row['unit']}", flush=True)
    rows = [row for a in args.algorithm for row in ab_rows(a, timed[(a, "here")], timed[(a, "other")], checkout)]
    for row in rows[1::2]:
        print(f"[speed] {row['algorithm']}: {row['value']} {row['unit']} = {row['ratio_to_baseline']}x "
              f"{row['baseline']}")
    if args.out and args.out != "-":
        for row in rows:
            append_row(Path(args.out), row)
    return rows


def compare_heads(args) -> list[dict]:
    """--rounds rounds of every algorithm with the mse head and each --compare-heads head, in subprocesses of
    this checkout, the order rotating by round; rows: mse's median, then each head's with its ratio to mse."""
    heads = ["mse", *args.compare_heads]
    timed = {(a, h): [] for a in args.algorithm for h in heads}
    for r in range(args.rounds):
        for algorithm in args.algorithm:
            for h in heads[r % len(heads):] + heads[:r % len(heads)]:
                row = time_in_checkout(ROOT, algorithm, args, ("--value-head", h, "--num-bins", str(args.num_bins)))
                timed[(algorithm, h)].append(row)
                print(f"[speed] round {r + 1}/{args.rounds} {algorithm} {h}: {float(row['value']):.1f} {row['unit']}",
                      flush=True)
    rows = []
    for algorithm in args.algorithm:
        base = None
        for h in heads:
            values = [float(x["value"]) for x in timed[(algorithm, h)]]
            median = statistics.median(values)
            row = min(timed[(algorithm, h)], key=lambda x: abs(float(x["value"]) - median))
            label = "value head mse; " if h == "mse" else ""  # the other heads' rows name theirs already
            row = {**row, "benchmark": "value_head_cost", "value": f"{median:.2f}", "notes": (
                f"{label}same-run comparison of value heads, {len(values)} rounds in subprocesses, value = median "
                f"of {', '.join(f'{v:.1f}' for v in values)}; " + row["notes"])}
            if base is None:
                base = row
            else:
                row["baseline"] = f"mse={base['value']}"
                row["ratio_to_baseline"] = f"{median / float(base['value']):.3f}"
                print(f"[speed] {algorithm} {h}: {median:.1f} {row['unit']} = {row['ratio_to_baseline']}x mse")
            rows.append(row)
    if args.out and args.out != "-":
        for row in rows:
            append_row(Path(args.out), row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.against and (args.compare_heads or args.value_head != "mse"):
        raise RlzooError("--against times both checkouts with their default (mse) value head: leave out "
                         "--value-head and --compare-heads (another kind of A/B; run it on its own).")
    if args.against:
        return against(args)
    if args.compare_heads:
        return compare_heads(args)
    load, xla_flags = setup_process(args)
    return [measure(name, args, load, xla_flags) for name in args.algorithm]


if __name__ == "__main__":
    try:
        main()
    except RlzooError as err:
        sys.exit("error: " + textwrap.fill(str(err), width=100, break_long_words=False, break_on_hyphens=False))
