"""Same-run A/B of rlzoo.networks.CPU_MATMUL_LAYOUT: an offline algorithm's update with and without it.

    python benchmarks/matmul_layout.py --algorithm iql --pin-cores 0
    python benchmarks/matmul_layout.py --algorithm td3_bc --pin-cores 0 --rounds 30

Both programs are built in one process (the flag is read when a program is traced) and their calls are
interleaved, round by round, so that a machine's drift falls on both alike. Each call is --updates updates of
one seed on synthetic HalfCheetah-shaped data, as `speed.py` times them. Two rows go to results/speed.csv
(benchmark update_throughput_matmul_layout), the layout's with XLA's default as its baseline and ratio.
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
    p.add_argument("--updates", type=int, default=200, help="updates per call")
    p.add_argument("--rounds", type=int, default=40, help="timed calls of each program, interleaved")
    p.add_argument("--pin-cores", default="", help="CPU cores to run on, e.g. 0 (one core, as speed.py)")
    p.add_argument("--out", default=str(ROOT / "results" / "speed.csv"), help="CSV to append to ('' for none)")
    args = p.parse_args(argv)
    if args.pin_cores:
        os.sched_setaffinity(0, {int(c) for c in args.pin_cores.split(",")})
    import jax

    import rlzoo  # noqa: F401  (sets the single-thread CPU XLA_FLAGS, read when the backend starts)
    from rlzoo import networks, provenance
    from rlzoo.run import seed_keys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    if jax.default_backend() != "cpu":
        raise SystemExit("CPU_MATMUL_LAYOUT only acts on the CPU backend; run this with JAX_PLATFORMS=cpu")
    mod = speed.load_algorithm(args.algorithm)
    setup = argparse.Namespace(num_seeds=1, updates=args.updates, batch_size=256, scan_unroll=1, seed=0,
                               dataset_size=1_000_000)
    programs = {}
    for layout in (False, True):
        networks.CPU_MATMUL_LAYOUT = layout
        _, train_chunk, state, data = speed.offline_setup(mod, setup, seed_keys([0]))
        compiled = train_chunk.lower(state, data).compile()
        state, _ = compiled(state, data)
        jax.block_until_ready(state)
        programs[layout] = [compiled, state, data]
    networks.CPU_MATMUL_LAYOUT = True
    seconds = {False: [], True: []}
    for _ in range(args.rounds):
        for layout, program in programs.items():
            compiled, state, data = program
            t0 = time.perf_counter()
            program[1], metrics = compiled(state, data)
            jax.block_until_ready((program[1], metrics))
            seconds[layout].append(time.perf_counter() - t0)
    rate = {layout: args.updates / statistics.median(s) for layout, s in seconds.items()}
    ratio = rate[True] / rate[False]
    best = min(seconds[False]) / min(seconds[True])
    info = provenance.info()
    print(f"[matmul_layout] {args.algorithm} on {info['device']}, 1 seed, median of {args.rounds} interleaved calls "
          f"x {args.updates} updates: XLA's layout {rate[False]:.1f} updates/s, CPU_MATMUL_LAYOUT {rate[True]:.1f} "
          f"({ratio:.3f}x; fastest calls {best:.3f}x)")
    if args.out:
        for layout in (False, True):
            s = seconds[layout]
            speed.append_row(Path(args.out), {
                "benchmark": "update_throughput_matmul_layout", "algorithm": args.algorithm,
                "device": info["device"], "num_seeds": 1, "batch_size": 256, "unit": "updates/s",
                "value": f"{rate[layout]:.2f}",
                "baseline": f"xla-default-layout={rate[False]:.2f}" if layout else "",
                "ratio_to_baseline": f"{ratio:.3f}" if layout else "", "commit": info["commit"],
                "date": info["date"], "jax": info["jax"],
                "notes": f"rlzoo.networks.CPU_MATMUL_LAYOUT={layout}; median of {args.rounds} calls x "
                         f"{args.updates} updates interleaved with the other setting's in one process (per-call "
                         f"updates/s min {args.updates / max(s):.1f} max {args.updates / min(s):.1f}; fastest-call "
                         f"ratio {best:.3f}); synthetic 1M-row dataset; pinned to cores {args.pin_cores or 'none'}; "
                         f"CPU {provenance.cpu_signature()}"})
    return ratio


if __name__ == "__main__":
    main()
