"""The GPU figures of the open issues in one call of a short device lease, step by step, within a deadline.

    python benchmarks/device_suite.py --out "$OUT" --steps speed minatar       # the lease of 2026-11-27
    python benchmarks/device_suite.py --out "$OUT" --steps unroll atari purejaxql --atari-side-by-side \
        --deadline-s 555 --speed-reserve-s 310 --atari-rate 4500 \
        --games Breakout-MinAtar Asterix-MinAtar --purejaxql .pjq               # the lease of 2026-11-28,
    python benchmarks/device_suite.py --out "$OUT" --steps purejaxql --deadline-s 250 \
        --games Asterix-MinAtar Breakout-MinAtar --purejaxql .pjq               # then its second call
    python benchmarks/device_suite.py --out /tmp/suite --deadline-s 300 --quick # rehearsal on the CPU

Steps, run in the order given, each only while time is left:
- `speed`: the update throughput of each algorithm (`benchmarks/speed.py`, in this one process so that JAX and
  the GPU start once): IQL, TD3+BC and CQL with 1 and 10 vmapped seeds, SAC with 1, PQN on Breakout-MinAtar with
  1 and 10, PQN on Atari Breakout (ale-py inside the jit, then stepped from the host).
- `unroll`: IQL's throughput as the chunk's scan is unrolled 1 and 4 updates per loop iteration with 1 and with
  10 seeds (--scan-unroll), all in one run so that the ratios compare like with like, and the compiled
  HLO of the 1-seed update (<out>/iql-1seed-hlo.txt), whose fusions are the kernels it launches; then IQL again
  with XLA's CUDA graphs extended to while loops (COMMAND_BUFFER_FLAGS), each figure in a child process.
- `minatar`: PQN's paper-length MinAtar runs (`benchmarks/minatar.py run`, 10 seeds, 1e7 steps) under their own
  names (--tag, e.g. gpu-h200), stopped at the deadline; an unfinished run keeps its checkpoint in
  --runs-root and resumes on the next call while the machine is still held.
- `purejaxql`: the reference implementation's 1e7-step MinAtar runs (`benchmarks/purejaxql_scores.py`, 10
  seeds) for the same games; --purejaxql names a folder holding its `purejaxql` package and, in `site/`, the
  pure-Python packages it needs that the machine lacks (hydra-core, omegaconf, antlr4): see
  benchmarks/purejaxql_baseline.md.
- `atari`: PQN on Atari (`benchmarks/atari.py`, default Breakout and Pong, --atari-steps each, or as many whole
  chunks as the time left allows) with ale-py's emulators on the host's cores; --atari-side-by-side runs the
  games at once.
- `profile`: where IQL's update spends its time on this device (`benchmarks/profile_update.py`, 1 and 10 seeds):
  every kernel's count and time per update, into <out>/profiles/ (packed into runs.tgz); the kernels per update
  and their share decide what a restructured update must remove to reach 10,000 updates/s.
- `sac`: SAC on HalfCheetah-v5 with 5 vmapped seeds for 1M steps (issue 3's learning check, which the CPU could
  afford for one seed only); MuJoCo on the host, updates on the GPU; stopped at the deadline, it resumes from
  its checkpoint on the next call while the machine is held. Needs the mujoco wheels (below).
The machine's report goes to <out>/machine.txt (JAX's environment, nvidia-smi). Speed rows go to <out>/speed.csv
(results/speed.csv's schema); curves, summaries, new results/scores.csv rows
and run logs are packed into <out>/runs.tgz.

The machine has JAX with CUDA but no network and not every package rlzoo needs. Before the lease, in the
repository's root (Python 3.12 wheels, as the machine's Python is 3.12):
    echo /.whl/ >> .git/info/exclude
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        flax==0.12.12 optax==0.2.8 chex==0.1.92 orbax-checkpoint==0.12.8 gymnasium==1.4.0 \
        farama-notifications==0.0.6 gymnax==0.0.9 ale-py==0.12.1 tyro==1.0.17 docstring-parser typeguard shtab \
        mujoco==4.0.0 mujoco-core==4.0.0 glfw    # the last three for the sac step (MuJoCo envs), 10 MB
and rehearse with a Python 3.12 venv holding jax 0.11.2 (the machine's version) and `--quick`. The call then
carries `.whl` (and `.pjq`) and runs, with RLZOO_COMMIT set because the copy has no .git:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    RLZOO_COMMIT=<commit> PYTHONUNBUFFERED=1 python3 benchmarks/device_suite.py --out $OUT --deadline-s 545 ...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
# JAX takes 75% of GPU memory per process by default; this process keeps its share while the MinAtar runs go on
# in child processes, so every process here allocates as it needs instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def elapsed() -> float:
    return time.monotonic() - T0


def speed_runs(quick: bool) -> list[list[str]]:
    """(arguments of benchmarks/speed.py), most wanted first. --quick: tiny sizes for a CPU rehearsal."""
    return [
        ["--algorithm", "iql", "--num-seeds", "1", "--updates", scaled(20_000, quick)],
        ["--algorithm", "iql", "--num-seeds", "10", "--updates", scaled(10_000, quick)],
        ["--algorithm", "td3_bc", "--num-seeds", "1", "--updates", scaled(20_000, quick)],
        ["--algorithm", "cql", "--num-seeds", "1", "--updates", scaled(4_000, quick)],
        ["--algorithm", "pqn", "--num-seeds", "1", "--updates", scaled(100, quick)],
        ["--algorithm", "pqn", "--num-seeds", "10", "--updates", scaled(100, quick)],
        ["--algorithm", "td3_bc", "--num-seeds", "10", "--updates", scaled(10_000, quick)],
        ["--algorithm", "cql", "--num-seeds", "10", "--updates", scaled(2_000, quick)],
        ["--algorithm", "sac", "--num-seeds", "1", "--updates", scaled(10_000, quick)]
        + (["--replay-capacity", "10000"] if quick else []),
        ["--algorithm", "pqn", "--env", "Breakout", "--num-seeds", "1", "--updates", "2" if quick else "10"],
        ["--algorithm", "pqn", "--env", "Breakout", "--num-seeds", "1", "--updates", "2" if quick else "10",
         "--no-atari-xla"],
    ]


def unroll_runs(quick: bool, out: str) -> list[list[str]]:
    """IQL with 1 and with 10 seeds at scan unrolls 1 and 4 (compilation grows with the unroll: on the CPU 3 s at
    1, 24 s at 16, which a 15-minute lease cannot spare); the updates per call are a multiple of every unroll. The
    1-seed rolled run also writes its compiled HLO to <out>/iql-1seed-hlo.txt: its fusions are the kernels of one
    update."""
    return [["--algorithm", "iql", "--num-seeds", str(n), "--updates", scaled(16_000 if n == 1 else 8_000, quick),
             "--scan-unroll", str(u)] + (["--dump-hlo", str(Path(out) / "iql-1seed-hlo.txt")] if n == u == 1 else [])
            for n in (1, 10) for u in (1, 4)]


# XLA:GPU records runs of kernels as CUDA graphs (command buffers); WHILE, the type that lets a while loop's body
# be one, has not always been in the default set, and small graphs are left out (unchecked on JAX 0.11.2).
# With WHILE (and graphs of any size) the whole chunk's scan can be one graph launch instead of one launch per kernel
# of every update, which is where IQL's time goes on a GPU (1% of the card's matmul rate, session 16).
COMMAND_BUFFER_FLAGS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE"
                        " --xla_gpu_graph_min_graph_size=1")


def command_buffer_runs(quick: bool) -> list[list[str]]:
    """IQL with 1 seed at unrolls 1 and 4 and with 10 seeds at 1, each in a child process whose XLA_FLAGS add
    COMMAND_BUFFER_FLAGS (read once, when JAX's backend starts); compare with unroll_runs' rows of the same call."""
    return [["--algorithm", "iql", "--num-seeds", str(n), "--updates", scaled(16_000 if n == 1 else 8_000, quick),
             "--scan-unroll", str(u)] for n, u in ((1, 1), (10, 1), (1, 4))]


def scaled(n: int, quick: bool) -> str:
    return str(max(n // 100, 16) if quick else n)


def run_speed(args, runs: list[list[str]], xla_flags: str = "") -> None:
    """Each speed figure into <out>/speed.csv, in this process (JAX and the GPU start once) or, with `xla_flags`,
    each in a child process whose XLA_FLAGS add them (XLA reads them once, when JAX's backend starts)."""
    from rlzoo.run import import_script

    speed = import_script(ROOT / "benchmarks" / "speed.py", "_rlzoo_bench_speed")
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()}
    with_flags = f" with {xla_flags}" if xla_flags else ""
    for argv in runs:
        what = " ".join(argv) + with_flags
        if elapsed() > args.deadline_s - args.speed_reserve_s:
            print(f"[suite] no time left at {elapsed():.0f} s; skipped {what}", flush=True)
            continue
        full = [*argv, "--repeats", "3", "--out", str(Path(args.out) / "speed.csv"),
                "--matmul-size", str(args.matmul_size)]
        if xla_flags:
            run_bounded([sys.executable, str(ROOT / "benchmarks" / "speed.py"), *full],
                        Path(args.out) / "speed-flags.log", what, args.deadline_s, env)
            continue
        t = time.monotonic()
        try:
            speed.main(full)
        except BaseException:  # one failed figure must not cost the others: log it and go on
            traceback.print_exc()
            print(f"[suite] FAILED: {what}", flush=True)
        print(f"[suite] {what}: {time.monotonic() - t:.0f} s (at {elapsed():.0f} s)", flush=True)


def run_bounded(cmd: list[str], log: Path, what: str, deadline_s: float, env: dict | None = None) -> None:
    """Run `cmd` (and its children) until it ends or the deadline comes, keeping 25 s to pack the results."""
    left = deadline_s - elapsed() - 25
    if left < 60:
        print(f"[suite] no time left for {what} ({elapsed():.0f} s)", flush=True)
        return
    print(f"[suite] {what} for at most {left:.0f} s\n", end="", flush=True)  # one write: threads share stdout
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            print(f"[suite] {what} stopped at the deadline ({elapsed():.0f} s)", flush=True)


def minatar_common(args) -> list[str]:
    return ["--num-seeds", str(args.num_seeds), "--eval-every", str(args.eval_every), "--runs-root", args.runs_root,
            "--tag", args.tag, *(["--total-steps", "163840", "--eval-every", "81920"] if args.quick else [])]


def run_minatar(args) -> None:
    run_bounded([sys.executable, str(ROOT / "benchmarks" / "minatar.py"), "run", "--games", *args.games,
                 *minatar_common(args)], Path(args.out) / "minatar.log", f"MinAtar runs {args.games}", args.deadline_s)


def run_purejaxql(args) -> None:
    """The reference's runs, one process per game, its pure-Python needs from <--purejaxql>/site."""
    if not args.purejaxql:
        print("[suite] purejaxql: no --purejaxql folder given; skipped", flush=True)
        return
    folder = Path(args.purejaxql).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder / "site"),
                                                                      os.environ.get("PYTHONPATH", "")]))}
    steps = ["--total-steps", "163840"] if args.quick else ["--total-steps", "9994240"]
    for game in args.games:
        run_bounded([sys.executable, str(ROOT / "benchmarks" / "purejaxql_scores.py"), "--purejaxql", str(folder),
                     "--game", game, "--num-seeds", str(args.num_seeds), *steps, "--decay-steps", "9994240",
                     "--out", str(ROOT / "results" / "curves")], Path(args.out) / "purejaxql.log",
                    f"purejaxql {game}", args.deadline_s, env)


ATARI_CHUNK = 16384  # env steps per chunk of benchmarks/atari.py's runs (its --chunk default)


def run_atari(args) -> None:
    """PQN on Atari (benchmarks/atari.py: the paper's Atari table, ale-py inside the jit, its emulators on the
    host's cores) for --atari-steps env steps per game. A run stopped at the deadline leaves only its training
    curve. With --atari-side-by-side each game is its own process, all at once, the host's cores split between
    them: one game's emulators alone leave most of the GPU idle."""
    steps = atari_steps(args)
    if not steps:
        print(f"[suite] no time left for Atari ({elapsed():.0f} s)", flush=True)
        return
    length = ["--total-steps", str(steps)] + (["--eval-episodes", "1", "--eval-max-steps", "200"] if args.quick else [])
    script = [sys.executable, str(ROOT / "benchmarks" / "atari.py")]
    if not args.atari_side_by_side:
        run_bounded([*script, "--games", *args.atari_games, *length, "--runs-root", args.runs_root],
                    Path(args.out) / "atari.log", f"Atari {args.atari_games}", args.deadline_s)
        return
    threads = str(max(1, (os.cpu_count() or 1) // len(args.atari_games)))
    games = [threading.Thread(target=run_bounded, args=(
        [*script, "--games", game, *length, "--runs-root", args.runs_root, "--env-threads", threads],
        Path(args.out) / f"atari-{game}.log", f"Atari {game} ({threads} env threads)", args.deadline_s))
        for game in args.atari_games]
    for t in games:
        t.start()
    for t in games:
        t.join()


def atari_steps(args) -> int:
    """Env steps per game: --atari-steps, or fewer if that would not end by the deadline at --atari-rate env steps/s
    per game after --atari-overhead-s (start, compilation, evaluation), in whole chunks (ATARI_CHUNK): a run
    stopped at the deadline has no final evaluation. --quick: one chunk."""
    if args.quick:
        return ATARI_CHUNK
    left = args.deadline_s - elapsed() - 25 - args.atari_overhead_s
    return min(args.atari_steps, int(max(left, 0) * args.atari_rate) // ATARI_CHUNK * ATARI_CHUNK)


def run_profile(args) -> None:
    """IQL's per-kernel profile with 1 and 10 seeds, each in a child process (JAX's profiler starts there)."""
    for n in (1, 10):
        out = Path(args.out) / "profiles" / f"iql-{n}seed-{args.tag}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        run_bounded([sys.executable, str(ROOT / "benchmarks" / "profile_update.py"), "--algorithm", "iql",
                     "--num-seeds", str(n), "--updates", "16" if args.quick else "400", "--out", str(out)],
                    Path(args.out) / "profile.log", f"profile of IQL x{n}", args.deadline_s)


def run_sac(args) -> None:
    """SAC on --sac-env with --sac-seeds vmapped seeds for --sac-steps env steps (the issue's learning check,
    several seeds at once): envs on the host, updates on the GPU; resumes from its checkpoint on a later call."""
    from rlzoo.run import start_or_resume_command

    steps = 10_000 if args.quick else args.sac_steps
    d = Path(args.runs_root) / f"sac-{args.sac_env}-s0-n{args.sac_seeds}-{steps}-{args.tag}"
    fresh = ["--env", args.sac_env, "--num-seeds", str(args.sac_seeds), "--total-steps", str(steps)] + (
        ["--learning-starts", "1000", "--eval-every", "5000", "--checkpoint-every", "5000", "--eval-episodes", "2",
         "--buffer-size", "20000"]
        if args.quick else [])
    run_bounded(start_or_resume_command(ROOT / "algorithms" / "sac.py", d, fresh)
                + ["--scores-csv", str(ROOT / "results" / "scores.csv"), "--quiet"],
                Path(args.out) / "sac.log", f"SAC {args.sac_env}", args.deadline_s)


def pack(args, scores_before: int) -> None:
    """New results/scores.csv rows, this device's curves and run files, into <out>."""
    scores = ROOT / "results" / "scores.csv"
    if "minatar" in args.steps:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "minatar.py"), "collect", *minatar_common(args)],
                       cwd=ROOT)
    new_rows = scores.read_text().splitlines()[scores_before:] if scores.exists() else []
    (Path(args.out) / "scores-new.csv").write_text("".join(r + "\n" for r in new_rows))
    runs = Path(args.runs_root).expanduser()
    curves = ROOT / "results" / "curves"
    with tarfile.open(Path(args.out) / "runs.tgz", "w:gz") as tar:
        for f in (sorted(curves.glob(f"pqn-*{args.tag}*")) + sorted(curves.glob("purejaxql-pqn-*-9994240-*"))
                  + sorted(curves.glob("pqn-atari-*"))):  # pqn-atari-runs.csv whole: keep the new rows
            tar.add(f, arcname=f"curves/{f.name}")
        for d in (sorted(runs.glob(f"pqn-*{args.tag}")) + sorted(runs.glob("pqn-atari-*"))
                  + sorted(runs.glob(f"sac-*{args.tag}"))):
            for name in ("eval.csv", "summary.json", "config.json", "train.csv"):
                if (d / name).exists():
                    tar.add(d / name, arcname=f"runs/{d.name}/{name}")
        for f in sorted((Path(args.out) / "profiles").glob("*.csv")):
            tar.add(f, arcname=f"profiles/{f.name}")


def device_tag() -> str:
    """The tag that names this device's runs (see tag_for)."""
    import jax

    return tag_for(jax.devices()[0].platform, jax.devices()[0].device_kind)


def tag_for(platform: str, kind: str) -> str:
    """'gpu-h200' for JAX's ('gpu', 'NVIDIA H200'), 'gpu-h100' for 'NVIDIA H100 80GB HBM3', 'cpu' on a CPU."""
    if platform == "cpu":
        return "cpu"
    words = [w for w in kind.lower().split() if w not in ("nvidia", "tesla")] or ["unknown"]
    return f"{platform}-" + "".join(c for c in words[0] if c.isalnum())


def write_machine(out: Path) -> None:
    """<out>/machine.txt: JAX's environment report and, where there is one, nvidia-smi's (driver, CUDA, GPU), so
    that the results name the machine beyond what a speed row's device column says."""
    import jax

    parts = [jax.print_environment_info(return_string=True)]
    try:
        parts.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, subprocess.SubprocessError) as e:
        parts.append(f"nvidia-smi: {e}")
    (out / "machine.txt").write_text("\n".join(parts))


STEPS = ("speed", "unroll", "profile", "minatar", "purejaxql", "atari", "sac")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for speed.csv, runs.tgz and logs")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=["speed", "minatar"])
    p.add_argument("--deadline-s", type=float, default=530, help="seconds from start by which everything ends")
    p.add_argument("--speed-reserve-s", type=float, default=270,
                   help="no new speed figure starts later than this many seconds before the deadline")
    p.add_argument("--matmul-size", type=int, default=8192, help="n of speed.py's reference n x n matmul")
    p.add_argument("--games", nargs="+", default=["Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar",
                                                  "SpaceInvaders-MinAtar"])
    p.add_argument("--num-seeds", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=491_520)
    p.add_argument("--runs-root", default="/tmp/rlzoo-device-runs")
    p.add_argument("--tag", default="", help="MinAtar run names' tag (default: the device, e.g. gpu-h200)")
    p.add_argument("--purejaxql", default="", help="folder with the purejaxql package and site/ (step purejaxql)")
    p.add_argument("--atari-games", nargs="+", default=["Breakout", "Pong"])
    p.add_argument("--atari-steps", type=int, default=1_474_560,
                   help="env steps per Atari game (x4 frames; a multiple of 16384): 1,474,560 is 5.9M frames")
    p.add_argument("--atari-rate", type=float, default=5000,
                   help="expected env steps/s of one game, for fitting its length to the time left")
    p.add_argument("--atari-overhead-s", type=float, default=90,
                   help="expected seconds of one game's run besides training (start, compilation, evaluation)")
    p.add_argument("--atari-side-by-side", action="store_true",
                   help="run the Atari games at once, one process each, the host's cores split between them")
    p.add_argument("--sac-env", default="HalfCheetah-v5")
    p.add_argument("--sac-seeds", type=int, default=5)
    p.add_argument("--sac-steps", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="tiny sizes: rehearse the whole suite on a CPU")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_machine(Path(args.out))
    args.tag = args.tag or device_tag()
    scores = ROOT / "results" / "scores.csv"
    scores_before = len(scores.read_text().splitlines()) if scores.exists() else 0
    for step in args.steps:
        if step == "speed":
            run_speed(args, speed_runs(args.quick))
        elif step == "unroll":
            run_speed(args, unroll_runs(args.quick, args.out))
            run_speed(args, command_buffer_runs(args.quick), COMMAND_BUFFER_FLAGS)
        elif step == "profile":
            run_profile(args)
        elif step == "minatar":
            run_minatar(args)
        elif step == "purejaxql":
            run_purejaxql(args)
        elif step == "atari":
            run_atari(args)
        else:
            run_sac(args)
    pack(args, scores_before)
    print(f"[suite] done at {elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
