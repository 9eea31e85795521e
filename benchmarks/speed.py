"""Steady-state update throughput of an algorithm file's real update, seeds vmapped, on synthetic data.

    python benchmarks/speed.py --algorithm iql --num-seeds 1 --updates 1000 --repeats 5
    python benchmarks/speed.py --algorithm sac --num-seeds 4 --updates 1000 --out /tmp/speed.csv
    python benchmarks/speed.py --algorithm iql --updates 1000 \
        --baseline-name corl-iql-torch2.13-cpu-1thread --baseline-value 40  # see corl_baseline.md
    python benchmarks/speed.py --algorithm pqn --num-seeds 10 --updates 10   # env steps/s, MinAtar

What is timed is exactly what training runs: `algorithms/<name>.py` is imported by path, its `Config`,
`init_state` and `make_train` are used as its `main` uses them, seeds are `jax.vmap`ped, and one call is
one jitted `lax.scan` of K updates with the batch sampled on the device. Data is synthetic with the
shapes of HalfCheetah (obs 17, act 6): a 1M-row dataset for offline algorithms (`make_train(config)` ->
`train_chunk(state, data)`), or, for replay-based online algorithms (`make_train(config, act_dim)` ->
`(act, learn)`, e.g. SAC), a replay buffer filled with `buffers.replay_add`; each timed `learn` call then
adds a block of K transitions and runs K scanned updates (no env steps, no acting).
PQN (`make_minatar`) is timed on a real gymnax MinAtar env (--env, default Breakout-MinAtar) with its
paper defaults: one call is its jitted, seed-vmapped `train_chunk` of --updates rollouts (128 envs x 32
steps each: acting, env steps, lambda-returns, 2 epochs x 32 minibatch updates), reported in env steps/s
summed over seeds (see purejaxql_baseline.md for the reference implementation's number). With an
Atari --env (e.g. Breakout) it times PQN's Atari chunk on the real ale-py env, with the env inside the
jit (--atari-xla, ale-py's XLA interface) or stepped from the host (--no-atari-xla).

The first call (trace + compile + one run) is reported separately from the steady state (median of
--repeats calls, each blocked until its outputs are ready). In the same run it measures a plain float32
matmul's GFLOP/s and takes the FLOPs of one update from XLA's cost analysis, so the achieved GFLOP/s can
be read as a fraction of what a matmul reaches on this machine. One row is appended to --out (the
results/speed.csv schema of shared DESIGN.md plus extra columns at the end) and one line is printed.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import os
import statistics
import time
import warnings
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
COLUMNS = ["benchmark", "algorithm", "device", "num_seeds", "batch_size", "unit", "value", "baseline",
           "ratio_to_baseline", "commit", "date", "jax",
           "compile_s", "flops_per_update", "gflops_achieved", "matmul_gflops", "fraction_of_matmul", "notes"]
SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algorithm", required=True, help="name of algorithms/<name>.py (e.g. iql, sac)")
    p.add_argument("--num-seeds", type=int, default=1, help="seeds vmapped in one program")
    p.add_argument("--updates", type=int, default=1000,
                   help="updates per seed per timed call (scan length); PQN: rollouts per call")
    p.add_argument("--env", default="Breakout-MinAtar", help="PQN only: a MinAtar game or an Atari game (ALE)")
    p.add_argument("--atari-xla", action=argparse.BooleanOptionalAction, default=True,
                   help="PQN on Atari: ale-py inside the jit (its XLA interface) or stepped from the host")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dump-hlo", default="",
                   help="offline algorithms: write the compiled chunk's optimized HLO to this file (what XLA runs: "
                        "its fusions are the kernels one update launches)")
    p.add_argument("--scan-unroll", type=int, default=1,
                   help="offline algorithms: updates per iteration of the chunk's scan (Config.scan_unroll)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the first (compiling) one")
    p.add_argument("--out", default=str(ROOT / "results" / "speed.csv"),
                   help="CSV to append one row to ('' or - for none)")
    p.add_argument("--baseline-name", default="", help="e.g. corl-iql-torch-cpu-1thread (measured apart)")
    p.add_argument("--baseline-value", type=float, default=None, help="the baseline's updates/s")
    p.add_argument("--dataset-size", type=int, default=1_000_000, help="rows of the synthetic offline data")
    p.add_argument("--replay-fill", type=int, default=None,
                   help="rows written into each seed's replay before timing (default: the whole buffer)")
    p.add_argument("--replay-capacity", type=int, default=None,
                   help="override the algorithm's Config.buffer_size (default: keep the paper's)")
    p.add_argument("--matmul-size", type=int, default=1024, help="n of the n x n @ n x n reference matmul")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-devices", type=int, default=1,
                   help="split the CPU into N XLA devices and shard the seed axis over them (one core each)")
    p.add_argument("--xla-multithread", action="store_true",
                   help="leave XLA's CPU intra-op threading on (RLZOO_CPU_THREADS=1 before importing rlzoo)")
    p.add_argument("--pin-cores", default="",
                   help="comma-separated CPU cores to run on (os.sched_setaffinity before JAX starts; XLA's threads "
                        "inherit it), e.g. 0 to time one core alone")
    p.add_argument("--start-at", type=float, default=0.0,
                   help="epoch seconds: start the steady calls no earlier (to overlap processes launched together)")
    p.add_argument("--note", default="", help="text added to the row's notes")
    p.add_argument("--benchmark", default="",
                   help="the row's benchmark column (default update_throughput or env_throughput)")
    args = p.parse_args(argv)
    if args.num_seeds < 1 or args.updates < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--num-seeds, --updates, --repeats and --batch-size must be positive")
    if (args.baseline_value is None) != (not args.baseline_name):
        p.error("--baseline-name and --baseline-value go together")
    if args.baseline_value is not None and args.baseline_value <= 0:
        p.error("--baseline-value must be positive")
    return args


def pin_cores(spec: str) -> None:
    """Keep this process (and the threads XLA starts later) on the comma-separated cores of `spec`, e.g. "0"."""
    if spec:
        os.sched_setaffinity(0, {int(c) for c in spec.split(",")})


def load_algorithm(name: str):
    """Import algorithms/<name>.py by path (algorithms/ is not a package)."""
    path = ROOT / "algorithms" / f"{name}.py"
    if not path.is_file():
        have = sorted(p.stem for p in (ROOT / "algorithms").glob("*.py"))
        raise SystemExit(f"no {path}; available: {', '.join(have)}")
    from rlzoo.run import import_script

    return import_script(path, f"rlzoo_bench_algorithm_{name}")


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


def time_calls(call, state, repeats: int, start_at: float = 0.0):
    """(first call seconds, [steady call seconds]); `call(state) -> (state, out)`, donated state threaded.
    The steady calls wait for the wall clock to reach `start_at` (epoch seconds), so that processes started
    together time their steady calls at the same time, after each has compiled."""
    import jax

    t0 = time.perf_counter()
    state, out = call(state)
    jax.block_until_ready((state, out))
    first = time.perf_counter() - t0
    time.sleep(max(start_at - time.time(), 0.0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, out = call(state)
        jax.block_until_ready((state, out))
        times.append(time.perf_counter() - t0)
    return first, times, state


def is_offline(mod) -> bool:
    """An offline algorithm's `make_train(config)` returns `train_chunk(states, data)`; a replay-based online
    one's `make_train(config, act_dim)` returns (act, learn)."""
    return hasattr(mod, "make_train") and "act_dim" not in inspect.signature(mod.make_train).parameters


def offline_setup(mod, args, keys):
    """(config, jitted train_chunk, seeds' state, synthetic data) of an offline algorithm, as its `main` builds
    them: --num-seeds seeds, --updates updates per call."""
    import jax

    from rlzoo.run import shard_seeds

    if not is_offline(mod):
        raise SystemExit(f"{Path(mod.__file__).stem} is not an offline algorithm (make_train(config) -> "
                         "train_chunk); use one of iql, td3_bc, cql")
    config = mod.Config(num_seeds=args.num_seeds, chunk=args.updates, batch_size=args.batch_size,
                        scan_unroll=args.scan_unroll)
    data = synthetic_transitions(jax.random.PRNGKey(args.seed + 12345), args.dataset_size)
    state = jax.vmap(partial(mod.init_state, config, obs_dim=OBS_DIM, act_dim=ACT_DIM))(keys)
    state, data = shard_seeds(state, data)
    return config, mod.make_train(config), state, data


def bench_offline(mod, args, keys, notes: list[str]):
    """`make_train(config)` -> jitted `train_chunk(states, data)`: one call = K updates per seed."""
    import jax

    config, train_chunk, state, data = offline_setup(mod, args, keys)
    first, times, state = time_calls(lambda s: train_chunk(s, data), state, args.repeats, args.start_at)
    if args.dump_hlo:  # after the timing, so that its compilation is not taken for the first call's
        Path(args.dump_hlo).write_text(train_chunk.lower(state, data).compile().as_text())
    # XLA's cost analysis counts a while-loop body once whatever its trip count, so the FLOPs of one
    # update come from the same program built with a 1-update scan.
    # One update may take several gradient steps (TD3+BC: policy_freq critic steps per actor step).
    steps_per_update = getattr(config, "policy_freq", 1)
    one = mod.make_train(mod.Config(num_seeds=args.num_seeds, chunk=steps_per_update, batch_size=args.batch_size))
    # Sharded over several devices, the cost analysis describes one device's share of the seeds.
    seeds_per_program = args.num_seeds / len(jax.tree_util.tree_leaves(state)[0].sharding.device_set)
    flops = xla_flops(one, state, data) / seeds_per_program / steps_per_update
    notes.append(f"synthetic dataset {args.dataset_size} rows (obs {OBS_DIM}, act {ACT_DIM}) on device; "
                 f"scan unroll {config.scan_unroll}; "
                 "call = make_train(config)(states, data), batch sampled in the scan")
    return first, times, flops


def bench_replay(mod, args, keys, notes: list[str]):
    """`make_train(config, act_dim)` -> (act, learn); one call = learn(states, K new transitions, True)."""
    import jax

    from rlzoo import buffers

    extra = {} if args.replay_capacity is None else {"buffer_size": args.replay_capacity}
    config = mod.Config(num_seeds=args.num_seeds, batch_size=args.batch_size, **extra)
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
    first, times, state = time_calls(lambda s: learn(s, block, True), state, args.repeats, args.start_at)
    one = synthetic_transitions(jax.random.PRNGKey(args.seed + 778), 1, (args.num_seeds,))
    flops = xla_flops(learn, state, one, True) / args.num_seeds
    notes.append(f"replay capacity {capacity} filled with {fill} synthetic rows via buffers.replay_add; "
                 f"call = learn(states, {args.updates} new transitions, True): replay_add of the block "
                 f"(cheap) + {args.updates} scanned updates, no env steps or acting")
    return first, times, flops


def bench_pqn(mod, args, keys, notes: list[str]):
    """PQN on MinAtar: one call = `jit(vmap(train_chunk))` over seeds, --updates rollouts each."""
    import jax

    from rlzoo.run import shard_seeds

    probe = mod.Config(env=args.env)
    rollout = probe.num_envs * probe.num_steps
    config = mod.Config(env=args.env, num_seeds=args.num_seeds, chunk=args.updates * rollout,
                        total_steps=10 * args.updates * rollout)
    _, init, train_chunk, _ = mod.make_minatar(config, args.env)
    state, _ = shard_seeds(jax.jit(jax.vmap(init))(keys))
    chunk = jax.jit(jax.vmap(train_chunk), donate_argnums=0)
    first, times, state = time_calls(chunk, state, args.repeats, args.start_at)
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

    config = mod.default_config(args.env, num_seeds=args.num_seeds, atari_xla=args.atari_xla)
    rollout = config.num_envs * config.num_steps
    config = mod.default_config(args.env, num_seeds=args.num_seeds, atari_xla=args.atari_xla,
                                chunk=args.updates * rollout, total_steps=10 * args.updates * rollout)
    _, game = mod.resolve_env(args.env)
    envs, network, learn, act_all, eps_schedule, dims = mod.make_atari(config, game, args.num_seeds)
    state = jax.jit(jax.vmap(lambda k: mod.init_state(config, network, k, envs.obs_shape)))(keys)
    n = envs.num_envs
    host = {"obs": envs.reset(seed=args.seed), "ep_return": np.zeros(n, np.float32),
            "last_return": np.zeros(n, np.float32)}
    make_chunk = mod.atari_xla_chunk if args.atari_xla else mod.atari_host_chunk
    chunk = make_chunk(config, envs, learn, act_all, eps_schedule, dims, host)
    first, times, state = time_calls(chunk, state, args.repeats, args.start_at)
    envs.close()
    notes.append(f"{args.env} (ale-py AtariVectorEnv, {n} games, threads {config.env_threads or 'auto'}), paper "
                 f"Atari defaults: {config.num_envs} envs x {config.num_steps} steps, {config.num_epochs} epochs x "
                 f"{config.num_minibatches} minibatches, Nature CNN + LayerNorm; env "
                 + ("inside the jit (ale-py XLA interface)" if args.atari_xla else "stepped from the host, one "
                    "jitted policy call per vector step") + f"; call = {args.updates} rollouts; frames = 4 x env steps")
    return first, times, float("nan"), config.chunk, "env_steps/s", rollout // config.num_minibatches


def matmul_gflops(n: int, repeats: int) -> float:
    """Median GFLOP/s of a jitted float32 n x n @ n x n matmul; with several local devices (the CPU split by
    --cpu-devices), one such matmul per device in one sharded call, summed: what those cores reach together."""
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.xla_multithread:
        os.environ["RLZOO_CPU_THREADS"] = "1"
    if args.cpu_devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()
    pin_cores(args.pin_cores)
    load = os.getloadavg()
    # rlzoo first: importing it sets the single-threaded CPU XLA_FLAGS, read when jax's backend starts.
    import rlzoo  # noqa: F401

    xla_flags = os.environ.get("XLA_FLAGS", "")
    import jax

    from rlzoo import provenance
    from rlzoo.run import seed_keys

    warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
    mod = load_algorithm(args.algorithm)
    platform = jax.devices()[0].platform
    single = SINGLE_THREAD_FLAG in xla_flags
    notes = [f"XLA CPU single-thread flags {'on' if single else 'off'}"
             + ("" if platform == "cpu" else f" (unused on {platform})") + f" (XLA_FLAGS='{xla_flags}')"]
    keys = seed_keys(list(range(args.seed, args.seed + args.num_seeds)))
    if args.algorithm == "pqn":
        atari = mod.resolve_env(args.env)[0] == "atari"
        first, times, flops, work, unit, batch_size = (bench_pqn_atari if atari else bench_pqn)(mod, args, keys, notes)
        what = "env steps"
    else:
        bench = bench_offline if is_offline(mod) else bench_replay
        first, times, flops = bench(mod, args, keys, notes)
        work, unit, batch_size, what = args.updates, "updates/s", args.batch_size, "updates"

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
        f"matmul {args.matmul_size}^2 float32 jitted, median"
        + (f", one per device on {args.cpu_devices} devices at once, summed" if args.cpu_devices > 1 else ""),
        *([] if args.algorithm == "pqn" else [
            "flops_per_update from XLA cost_analysis of the same function built with a 1-update scan, / seeds "
            "(XLA counts a while-loop body once)"]),
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores",
        f"CPU {provenance.cpu_signature()}",
        *([f"pinned to cores {args.pin_cores} (sched_setaffinity)"] if args.pin_cores else []),
        *([args.note] if args.note else []),
    ]
    info = provenance.info()
    ratio = value / args.baseline_value if args.baseline_value else None
    row = {
        "benchmark": args.benchmark or ("env_throughput" if unit == "env_steps/s" else "update_throughput"),
        "algorithm": args.algorithm,
        "device": info["device"],
        "num_seeds": args.num_seeds,
        "batch_size": batch_size,
        "unit": unit,
        "value": f"{value:.2f}",
        "baseline": f"{args.baseline_name}={args.baseline_value:g}" if args.baseline_name else "",
        "ratio_to_baseline": f"{ratio:.3f}" if ratio is not None else "",
        "commit": info["commit"],
        "date": info["date"],
        "jax": info["jax"],
        "compile_s": f"{compile_s:.2f}",
        "flops_per_update": f"{flops:.4g}",
        "gflops_achieved": f"{achieved:.2f}",
        "matmul_gflops": f"{mm:.2f}",
        "fraction_of_matmul": f"{achieved / mm:.3f}",
        "notes": "; ".join(notes),
    }
    if args.out and args.out != "-":
        append_row(Path(args.out), row)
    vs = f", {ratio:.2f}x {args.baseline_name}" if ratio is not None else ""
    print(f"[speed] {args.algorithm} x{args.num_seeds} seeds, batch {batch_size}, "
          f"{work} {what}/call on {info['device']}: {value:.1f} {unit} total "
          f"({value / args.num_seeds:.1f}/seed{vs}); "
          f"compile {compile_s:.1f}s; {flops / 1e9:.3f} GFLOP/update -> {achieved:.1f} GFLOP/s = "
          f"{achieved / mm:.2f} of a {args.matmul_size}^2 matmul ({mm:.1f} GFLOP/s); "
          f"XLA single-thread {'on' if single else 'off'}; load {load[0]:.2f}"
          + (f"; row appended to {args.out}" if args.out and args.out != "-" else ""))
    return row


if __name__ == "__main__":
    main()
