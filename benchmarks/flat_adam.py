"""Same-run A/B of Adam on one flat vector (`optax.flatten(optax.adam(lr))`) against the per-array
`optax.adam(lr)` that the algorithms use, in an offline algorithm's update.

    python benchmarks/flat_adam.py --algorithm iql --pin-cores 0
    python benchmarks/flat_adam.py --algorithm iql --num-seeds 2 --cpu-devices 2
    python benchmarks/flat_adam.py --algorithm cql --pin-cores 0 --updates 50 --rounds 12

Flattening keeps Adam's arithmetic, element by element, but XLA then runs it as a few fused ops over one
concatenated vector per network instead of several per parameter array. Both programs are built in one process
(`optax.adam` is swapped for the flat one while the second state is created) and their calls are interleaved,
round by round, so that a machine's drift falls on both alike. Each call is --updates updates of each seed on
synthetic HalfCheetah-shaped data, as `speed.py` times them. Two rows go to results/speed.csv (benchmark
update_throughput_flat_adam, updates/s summed over the seeds): plain Adam's, and flat Adam's with plain Adam as
its baseline and ratio. (The rows of commits 8ae3ca2 to c8a4bff measured the same transform as
`rlzoo.optim.flat_adam`, while the algorithms used it; they went back to `optax.adam` in 5a66779.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="iql", help="an offline algorithm: iql, td3_bc, cql")
    p.add_argument("--num-seeds", type=int, default=1, help="seeds per program (vmapped; sharded with --cpu-devices)")
    p.add_argument("--cpu-devices", type=int, default=1, help="split the CPU into N XLA devices, as speed.py")
    p.add_argument("--updates", type=int, default=200, help="updates per call")
    p.add_argument("--rounds", type=int, default=40, help="timed calls of each program, interleaved")
    p.add_argument("--dataset-size", type=int, default=1_000_000, help="rows of the synthetic offline data")
    p.add_argument("--pin-cores", default="", help="CPU cores to run on, e.g. 0 (one core, as speed.py)")
    p.add_argument("--out", default=str(ROOT / "results" / "speed.csv"), help="CSV to append to ('' for none)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    speed.pin_cores(args.pin_cores)
    if args.cpu_devices > 1:
        os.environ["RLZOO_CPU_DEVICES"] = str(args.cpu_devices)
    import jax
    import optax

    from rlzoo import provenance
    from rlzoo.run import seed_keys

    mod = speed.load_algorithm(args.algorithm)
    setup = argparse.Namespace(num_seeds=args.num_seeds, updates=args.updates, batch_size=256, scan_unroll=1, seed=0,
                               dataset_size=args.dataset_size)
    adam = optax.adam
    programs = {}
    for flat in (False, True):
        if flat:  # the algorithm file calls optax.adam when it builds its state
            optax.adam = lambda *a, **kw: optax.flatten(adam(*a, **kw))
        try:
            _, train_chunk, state, data = speed.offline_setup(mod, setup, seed_keys(list(range(args.num_seeds))))
        finally:
            optax.adam = adam
        compiled = train_chunk.lower(state, data).compile()
        state, _ = compiled(state, data)
        jax.block_until_ready(state)
        programs[flat] = [compiled, state, data]
    leaves = {flat: len(jax.tree_util.tree_leaves(program[1])) for flat, program in programs.items()}
    if leaves[True] >= leaves[False]:  # flat moments: fewer arrays in the state
        raise SystemExit(f"{args.algorithm}'s state did not take the flat Adam (does it call optax.adam?)")
    seconds = {False: [], True: []}
    for _ in range(args.rounds):
        for flat, program in programs.items():
            compiled, state, data = program
            t0 = time.perf_counter()
            program[1], metrics = compiled(state, data)
            jax.block_until_ready((program[1], metrics))
            seconds[flat].append(time.perf_counter() - t0)
    updates = args.updates * args.num_seeds  # per call, all seeds
    rate = {flat: updates / statistics.median(s) for flat, s in seconds.items()}
    ratio = rate[True] / rate[False]
    best = min(seconds[False]) / min(seconds[True])
    info = provenance.info()
    devices = len(jax.tree_util.tree_leaves(programs[True][1])[0].sharding.device_set)
    print(f"[flat_adam] {args.algorithm} on {info['device']}, {args.num_seeds} seed(s) on {devices} device(s), median "
          f"of {args.rounds} interleaved calls x {args.updates} updates: optax.adam {rate[False]:.1f} updates/s, "
          f"optax.flatten(optax.adam) {rate[True]:.1f} "
          f"({ratio:.3f}x; fastest calls {best:.3f}x)")
    if args.out:
        for flat in (False, True):
            s = seconds[flat]
            what = "optax.flatten(optax.adam), one flat vector" if flat else "optax.adam per parameter array"
            speed.append_row(Path(args.out), {
                "benchmark": "update_throughput_flat_adam", "algorithm": args.algorithm,
                "device": info["device"], "num_seeds": args.num_seeds, "batch_size": 256, "unit": "updates/s",
                "value": f"{rate[flat]:.2f}",
                "baseline": f"optax.adam={rate[False]:.2f}" if flat else "",
                "ratio_to_baseline": f"{ratio:.3f}" if flat else "", "commit": info["commit"],
                "date": info["date"], "jax": info["jax"],
                "notes": f"{what}; median of "
                         f"{args.rounds} calls x {args.updates} updates interleaved with the other optimizer's in "
                         f"one process (per-call updates/s min {updates / max(s):.1f} max "
                         f"{updates / min(s):.1f}; fastest-call ratio {best:.3f}); synthetic "
                         f"{args.dataset_size}-row dataset; seeds on {devices} device(s); "
                         f"pinned to cores {args.pin_cores or 'none'}; "
                         f"CPU {provenance.cpu_signature()}"})
    return ratio


if __name__ == "__main__":
    main()
