"""Sweeps (benchmarks/sweep.py) and seeds over devices (rlzoo/devices.py): the same grid gives the same numbers
run here, on a real local Ray cluster (killed half-way and re-run) and through submitit; padded seeds change no
seed's result; bad input gets one paragraph."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PENDULUM_ID, checkpoint_steps, cli_env, kill_once_checkpointed, load_checkpoint

from benchmarks import offline
from rlzoo.rundir import process_alive

# submitit configures logging when imported, which closes the handlers there are; absl's closes its stream when that
# is no longer sys.stderr, as pytest's capture stream is inside a test. Imported here, while it still is.
try:
    import submitit  # noqa: F401
except ImportError:
    pass

REPO = Path(__file__).resolve().parents[1]
OFFLINE = [sys.executable, "-m", "benchmarks.offline"]
HOST = socket.gethostname()

# Two points (expectile 0.7 and 0.9) x 2 seeds of a tiny IQL on the Pendulum controller data: 1000 steps in
# chunks of 200 with a checkpoint after each, so that a point killed after its first checkpoint has work left.
TINY_SWEEP = f"""
algos = ["iql"]
datasets = ["{PENDULUM_ID}"]
num_seeds = 2
total_steps = 1000

[flags]
max_action = 2.0
hidden_dims = [32, 32]
batch_size = 64
eval_episodes = 1
chunk = 200
checkpoint_every = 200
eval_every = 1000

[grid]
expectile = [0.7, 0.9]
"""
POINTS = [offline.run_name("iql", PENDULUM_ID, 0, 2, 1000, f"expectile{e}") for e in (0.7, 0.9)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def scores(results: Path) -> dict[tuple[str, str], str]:
    """{(curves folder, seed): score} of a results folder's scores.csv."""
    return {(r["config"].split("/")[0], r["seed"]): r["score"] for r in read_rows(results / "scores.csv")}


def assert_same_runs(runs: Path, reference: Path) -> None:
    """Every point's evaluation and training logs are those of the reference run of the same point, bit for bit."""
    for name in POINTS:
        for log in ("eval.csv", "train.csv"):
            assert (runs / name / log).read_text() == (reference / name / log).read_text(), (name, log)


@pytest.fixture
def ray_cluster():
    """A real Ray head node on 127.0.0.1 with two CPU slots (two points at a time), in its own temp dir and
    process group; stopped in teardown by signalling that group (no `ray stop`, which stops every Ray here)."""
    pytest.importorskip("ray")
    from benchmarks.sweep_speed import start_ray_head, stop

    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    head, address, _ = start_ray_head(2, temp)
    try:
        yield address
    finally:
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_gives_the_same_numbers_here_through_submitit_and_on_ray_killed_half_way(
    pendulum_store, jax_cache_dir, tmp_path, ray_cluster, capsys, monkeypatch
):
    pytest.importorskip("submitit")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_SWEEP)
    env = cli_env(jax_cache_dir, pendulum_store)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def argv(backend: str, where: str, *more: str) -> list[str]:
        return [
            "sweep",
            str(config),
            "--backend",
            backend,
            "--runs-root",
            str(tmp_path / where / "runs"),
            "--results",
            str(tmp_path / where / "results"),
            *more,
        ]

    # 1. Here, one point after another: the reference.
    t0 = time.perf_counter()
    assert offline.main(argv("local", "local")) == 0
    local = scores(tmp_path / "local" / "results")
    assert len(local) == 4 and {r["ran_on"] for r in read_rows(tmp_path / "local" / "results" / "scores.csv")} == {
        f"local@{HOST}"
    }
    print(f"local: {time.perf_counter() - t0:.1f} s")

    # 2. SLURM's path through submitit's local executor: one job array, both points at once; the same numbers.
    t0 = time.perf_counter()
    assert (
        offline.main(
            argv(
                "slurm",
                "slurm",
                "--slurm-cluster",
                "local",
                "--gpus-per-point",
                "0",
                "--partition",
                "debug",
                "--time-min",
                "5",
            )
        )
        == 0
    )
    assert scores(tmp_path / "slurm" / "results") == local
    assert {r["ran_on"] for r in read_rows(tmp_path / "slurm" / "results" / "scores.csv")} == {f"slurm@{HOST}"}
    assert_same_runs(tmp_path / "slurm" / "runs", tmp_path / "local" / "runs")
    print(f"submitit: {time.perf_counter() - t0:.1f} s")

    # 3. Ray, one point at a time; the driver and its process group are killed once the first point has finished
    # and the second has a checkpoint.
    t0 = time.perf_counter()
    runs = tmp_path / "ray" / "runs"
    first, second = runs / POINTS[0], runs / POINTS[1]
    proc = subprocess.Popen(
        [*OFFLINE, *argv("ray", "ray", "--address", ray_cluster, "--jobs", "1")],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 150
    try:
        while not ((first / "summary.json").exists() and checkpoint_steps(second)):
            if proc.poll() is not None:
                pytest.fail("the Ray sweep ended before it could be killed: " + proc.stdout.read().decode()[-3000:])
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (second / "summary.json").exists() and max(checkpoint_steps(second)) < 1000
    # The point's algorithm process died with its Ray worker: nothing holds its run directory.
    deadline = time.monotonic() + 30
    while (second / "run.pid").exists() and process_alive(int((second / "run.pid").read_text())):
        assert time.monotonic() < deadline, "the killed sweep's algorithm process is still running"
        time.sleep(0.2)
    capsys.readouterr()

    # The same command again: the finished point is skipped, the other resumes from its checkpoint.
    assert offline.main(argv("ray", "ray", "--address", ray_cluster)) == 0
    out = capsys.readouterr().out
    assert f"[1/2] {POINTS[0]}: finished earlier" in out
    assert "[2/2] iql on " + PENDULUM_ID in out and "resuming from its newest checkpoint on Ray" in out
    assert "resumed at step" in (second / "harness.log").read_text()
    assert "resumed at step" not in (first / "harness.log").read_text()
    ray_rows = read_rows(tmp_path / "ray" / "results" / "scores.csv")
    assert scores(tmp_path / "ray" / "results") == local and len(ray_rows) == 4
    assert {r["ran_on"] for r in ray_rows} == {f"ray@{HOST}"}
    assert json.loads((second / "summary.json").read_text())["launcher"] == "ray"
    assert_same_runs(runs, tmp_path / "local" / "runs")
    print(f"ray, killed and resumed: {time.perf_counter() - t0:.1f} s")


def test_sweep_file_points_flags_and_wandb_groups(pendulum_store, tmp_path, capsys, monkeypatch):
    """Grid values become flags and run names (switches, tuples); --wandb reaches every point's process, whose
    W&B runs are one group per point (its run directory's name) with one run per seed."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    config = tmp_path / "grid.toml"
    config.write_text(
        f'algos = ["iql", "td3_bc"]\ndatasets = ["{PENDULUM_ID}"]\ntotal_steps = 2000\nnum_seeds = 2\n'
        'tag = "probe"\n[flags]\nmax_action = 2.0\nnormalize_obs = false\n'
        "[grid]\nhidden_dims = [[32, 32], [64]]\n"
    )
    assert offline.main(["sweep", str(config), "--runs-root", str(tmp_path / "runs"), "--wandb", "--dry-run"]) == 0
    out = capsys.readouterr().out
    names = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")]
    stem = PENDULUM_ID.replace("/", "_")
    assert names == [f"{a}-{stem}-s0-n2-2k-hidden_dims{h}-probe" for a in ("iql", "td3_bc") for h in ("32x32", "64")]
    line = next(line for line in out.splitlines() if "hidden_dims64-" in line)
    assert "--max-action 2.0 --no-normalize-obs --hidden-dims 64 --wandb" in line
    assert not (tmp_path / "runs").exists()

    from algorithms import iql
    from rlzoo.run import Run

    run_dir = tmp_path / "runs" / names[0]
    cfg = iql.Config(num_seeds=2, seed=3, wandb=True, wandb_mode="disabled", quiet=True, run_dir=str(run_dir))
    logger = Run(cfg, "iql", run_dir).make_logger("score")
    assert [(r.group, r.name) for r in logger.wandb_runs] == [
        (names[0], f"{names[0]}-seed3"),
        (names[0], f"{names[0]}-seed4"),
    ]
    logger.close()


def test_bad_sweeps_get_one_paragraph(pendulum_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    monkeypatch.setenv("MINARI_REMOTE", "offline://")
    good = f'algos = ["iql"]\ndatasets = ["{PENDULUM_ID}"]\ntotal_steps = 400\n[flags]\nmax_action = 2.0\n'

    def refused(text: str | None, *more: str) -> str:
        path = tmp_path / "bad.toml"
        if text is not None:
            path.write_text(text)
        code = offline.main(
            ["sweep", str(path), "--runs-root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), *more]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "error: " in err, err
        paragraph = err.split("error: ", 1)[1].strip()
        assert "\n\n" not in paragraph
        return " ".join(paragraph.split())

    assert "there is no sweep file" in refused(None) and "iql-expectile-beta.toml" in refused(None)
    assert "is not valid TOML" in refused("algos = [")
    assert "unknown key 'algo'" in refused(good.replace("algos", "algo"))
    assert "lacks total_steps" in refused(good.replace("total_steps = 400\n", ""))
    assert "unknown algorithm 'iqll'" in refused(good.replace('"iql"', '"iqll"'))
    err = refused(good + "[grid]\nexpectle = [0.7, 0.9]\n")
    assert "algorithms/iql.py has no flag --expectle" in err and "--expectile" in err
    assert "must be a non-empty list" in refused(good + "[grid]\nbeta = 3.0\n")
    assert "'total_steps' is set by the sweep" in refused(good + "total_steps = 5\n")
    assert "unknown backend 'dask'" in refused(good, "--backend", "dask")
    assert "--jobs many: give a number of at least 1, or auto" in refused(good, "--jobs", "many")
    err = refused(good, "--backend", "ray", "--address", f"127.0.0.1:{free_port()}")
    assert "nothing answers there" in err and "ray start --head" in err
    assert "this machine has no SLURM (no sbatch on PATH)" in refused(good, "--backend", "slurm")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert "needs Ray, which is not installed here: pip install -e '.[sweep]'" in refused(good, "--backend", "ray")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------- seeds over devices

SHARD_ARGS = [
    "--env",
    PENDULUM_ID,
    "--max-action",
    "2.0",
    "--hidden-dims",
    "32",
    "32",
    "--batch-size",
    "64",
    "--eval-episodes",
    "1",
    "--chunk",
    "200",
    "--checkpoint-every",
    "200",
    "--eval-every",
    "200",
    "--total-steps",
    "600",
    "--quiet",
]


def run_iql(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "algorithms" / "iql.py"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def per_seed(run_dir: Path, name: str, seeds: int) -> np.ndarray:
    data = np.genfromtxt(run_dir / name, delimiter=",", names=True)
    rows = data[data["seed"] < seeds]
    return np.stack([rows[n] for n in data.dtype.names])


@pytest.mark.slow  # ~95 s on the 2-core CI; test_iql's two-device test keeps sharding itself in CI
def test_seeds_over_four_devices_padded_or_not(pendulum_store, jax_cache_dir, tmp_path):
    """--num-devices 4 splits the CPU into four XLA devices. 4 seeds shard one per device; 6 seeds are padded
    to 8 with copies that are dropped: each seed's numbers are bit for bit those of an 8-seed run on the same
    devices (padding changes no seed), and match the unsharded run's up to float rounding (XLA compiles a
    program for each per-device batch; the unsharded 1-seed and 6-seed programs differ in the same last bits).
    Checkpoints hold only the real seeds, and a padded run killed after a checkpoint resumes to the same logs."""
    env = cli_env(jax_cache_dir, pendulum_store)
    runs = {}
    for seeds, devices in ((4, 1), (4, 4), (6, 1), (8, 4)):
        runs[seeds, devices] = tmp_path / f"n{seeds}-d{devices}"
        proc = run_iql(
            SHARD_ARGS
            + ["--num-seeds", str(seeds), "--run-dir", str(runs[seeds, devices])]
            + (["--num-devices", str(devices)] if devices > 1 else []),
            env,
        )
        if (seeds, devices) == (4, 4):
            assert "4 seeds sharded over 4 devices" in proc.stdout
        if devices == 1:
            assert "sharded" not in proc.stdout and "padded" not in proc.stdout
    # 6 seeds on 4 devices, killed after its first checkpoint and resumed (still on 4 devices).
    padded = tmp_path / "n6-d4"
    cmd = [
        sys.executable,
        str(REPO / "algorithms" / "iql.py"),
        *SHARD_ARGS,
        "--num-seeds",
        "6",
        "--num-devices",
        "4",
        "--run-dir",
        str(padded),
    ]
    assert kill_once_checkpointed(cmd, padded, 200, env, REPO) == [200]
    state, meta = load_checkpoint(padded)
    assert meta["step"] == 200 and {v.shape[0] for v in state.values()} == {6}  # no padding saved
    proc = run_iql(["--resume", str(padded), "--num-devices", "4", "--quiet"], env)
    assert "6 seeds do not divide over 4 devices: the seed axis is padded with 2 copies of the last seed" in proc.stdout
    assert "resumed at step 200" in proc.stdout

    for name in ("train.csv", "eval.csv"):
        np.testing.assert_array_equal(per_seed(padded, name, 6), per_seed(runs[8, 4], name, 6), err_msg=name)
        for seeds, sharded in ((6, padded), (4, runs[4, 4])):
            np.testing.assert_allclose(
                per_seed(sharded, name, seeds),
                per_seed(runs[seeds, 1], name, seeds),
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{name}, {seeds} seeds",
            )
    assert json.loads((padded / "summary.json").read_text())["final_scores"].keys() == {str(s) for s in range(6)}


def test_points_run_here_at_once_each_get_a_gpu_of_their_own(tmp_path, capsys, monkeypatch):
    """--jobs N on a machine with GPUs: each running point sees one GPU (CUDA_VISIBLE_DEVICES), never one another
    point is using, and no more points run at once than there are GPUs."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    running, seen, lock = set(), [], threading.Lock()

    def fake_execute(job, args, env=None):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in running
            running.add(gpu)
            seen.append(gpu)
        time.sleep(0.05)
        with lock:
            running.discard(gpu)
        return 0, 0.05

    monkeypatch.setattr(offline, "execute", fake_execute)
    jobs = [offline.Job("iql", "d", "local", tmp_path / f"r{i}", []) for i in range(5)]
    sweep_ = offline.Sweep(jobs, argparse.Namespace(jobs=3, results=str(tmp_path / "results")))
    ended = list(offline.run_locally(sweep_, list(enumerate(jobs, 1))))
    assert sorted(i for i, *_ in ended) == [1, 2, 3, 4, 5] and set(seen) == {"3", "5"} and len(seen) == 5
    assert "--jobs 3 on 2 GPUs: 2 runs at a time, one per GPU" in capsys.readouterr().out
