"""Where one update's time goes: every XLA op (CPU thunk or GPU kernel) of an offline algorithm's chunk, per update.

    python benchmarks/profile_update.py --algorithm iql --pin-cores 0          # CPU, one core
    python benchmarks/profile_update.py --algorithm iql --num-seeds 10         # GPU: kernels per update

It builds the chunk exactly as `speed.py` times it (`algorithms/<name>.py`'s `make_train`, seeds vmapped,
synthetic HalfCheetah-shaped data on the device), runs it twice to compile and warm up, then records one
call with `jax.profiler` and reads the trace back with `jax.profiler.ProfileData`. Each op's time and count
are divided by the updates in the call. On the CPU the events are XLA's thunks (`ynn_fusion.*` matmuls run by
YNNPACK, `dot.*` matmuls run by Eigen, loop fusions, copies); on a GPU they are the kernels on the device's
streams, so the count per update is the number of kernel launches an update costs. Profiling adds a little
time per op: read shares and counts here, speeds in `speed.py`'s rows.

Writes one CSV (op, kind, calls and microseconds per update, share) and prints the totals per kind.
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNTIME_EVENTS = ("ThunkExecutor", "end: ", "SlinkyThreadPool")  # the CPU runtime's own spans, markers and waits


def op_kind(name: str, platform: str) -> str:
    """A coarse class of an op or kernel name, to total the time by what it does."""
    low = name.lower()
    if platform == "cpu":
        if low.startswith("ynn_fusion"):
            return "matmul (YNNPACK)"
        if low.startswith("dot"):
            return "matmul (Eigen)"
    elif any(k in low for k in ("gemm", "cublas", "cutlass", "sm90_xmma", "sm80_xmma", "matmul")):
        return "matmul"
    if "memcpy" in low or "memset" in low:
        return "memcpy/memset"
    if "copy" in low or "transpose" in low:
        return "copy/transpose"
    if low.startswith("while") or low.startswith("call") or low.startswith("conditional"):
        return "control flow"
    return "elementwise/reduce fusion"


def collect(trace_dir: str, platform: str) -> tuple[collections.Counter, collections.Counter]:
    """(total ns, count) per op name from the trace: the XLA thunk lines on the host for the CPU; for a GPU the
    device planes' stream lines (their events are kernels), or, where no line is named for a stream, every device
    line but the per-module and per-step summaries."""
    import jax

    files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
    if not files:
        raise SystemExit(f"no trace was written under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(str(files[-1]))
    if platform == "cpu":
        lines = [line for plane in data.planes if not plane.name.startswith("/device:")
                 for line in plane.lines if line.name.startswith("tf_XLA")]
    else:
        device = [line for plane in data.planes if plane.name.startswith("/device:") for line in plane.lines]
        lines = ([line for line in device if line.name.startswith("Stream")]
                 or [line for line in device if not any(k in line.name for k in ("Module", "Step", "Launch"))])
    ns, count = collections.Counter(), collections.Counter()
    for line in lines:
        for event in line.events:
            if event.name.startswith(RUNTIME_EVENTS):
                continue
            ns[event.name] += event.duration_ns
            count[event.name] += 1
    return ns, count


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algorithm", default="iql", help="an offline algorithm, algorithms/<name>.py")
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--updates", type=int, default=200, help="updates per seed in the recorded call")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scan-unroll", type=int, default=1)
    p.add_argument("--dataset-size", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin-cores", default="", help="CPU cores to run on, e.g. 0 (as speed.py)")
    p.add_argument("--out", default="",
                   help="CSV path (default results/profiles/<algorithm>-<n>seed-<device>-<date>.csv)")
    p.add_argument("--top", type=int, default=15, help="ops printed")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed

    speed.pin_cores(args.pin_cores)
    import jax

    import rlzoo  # noqa: F401  (sets the single-thread CPU XLA_FLAGS, read when the backend starts)
    from rlzoo import provenance
    from rlzoo.run import seed_keys

    mod = speed.load_algorithm(args.algorithm)
    keys = seed_keys(list(range(args.seed, args.seed + args.num_seeds)))
    _, train_chunk, state, data = speed.offline_setup(mod, args, keys)
    for _ in range(2):
        state, metrics = train_chunk(state, data)
        jax.block_until_ready((state, metrics))
    platform = jax.devices()[0].platform
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        state, metrics = train_chunk(state, data)
        jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
        ns, count = collect(trace_dir, platform)
    if not ns:
        raise SystemExit("the trace holds no XLA op events for this backend; nothing to report")
    per_update = args.updates
    total = sum(ns.values())
    kind = {name: op_kind(name, platform) for name in ns}
    rows = [{"op": name, "kind": kind[name], "calls_per_update": f"{count[name] / per_update:.3g}",
             "us_per_update": f"{t / 1e3 / per_update:.2f}", "share": f"{t / total:.6f}"}
            for name, t in ns.most_common()]
    info = provenance.info()
    tag = info["device"].split(":")[0] + ("-" + info["device"].split(":")[1].strip().split()[1].lower()
                                          if platform == "gpu" else "")
    out = Path(args.out or ROOT / "results" / "profiles"
               / f"{args.algorithm}-{args.num_seeds}seed-{tag}-{info['date'][:10]}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        f.write(f"# {args.algorithm}, {args.num_seeds} seed(s), batch {args.batch_size}, {args.updates} updates "
                f"recorded, scan unroll {args.scan_unroll}; {info['device']}; CPU {provenance.cpu_signature()}; "
                f"pinned to {args.pin_cores or 'no core'}; commit {info['commit']}; {info['date']}; "
                f"jax {info['jax']}\n")
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by_kind = collections.Counter()
    kinds_count = collections.Counter()
    for name, t in ns.items():
        by_kind[kind[name]] += t
        kinds_count[kind[name]] += count[name]
    print(f"[profile] {args.algorithm} x{args.num_seeds} seeds on {info['device']}: {total / 1e3 / per_update:.0f} us "
          f"of ops per update, {sum(count.values()) / per_update:.1f} ops per update")
    for kind, t in by_kind.most_common():
        print(f"  {kind:28s} {t / 1e3 / per_update:9.1f} us  {t / total:6.1%}  "
              f"{kinds_count[kind] / per_update:6.1f} ops")
    for row in rows[: args.top]:
        print(f"  {row['us_per_update']:>9} us  x{row['calls_per_update']:>5}  {row['kind']:26s} {row['op']}")
    print(f"[profile] wrote {out}")
    return rows


if __name__ == "__main__":
    main()
