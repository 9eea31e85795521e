"""benchmarks/: the results files' rules, the speed, online, MinAtar and Atari harnesses, each reached as
`python -m benchmarks.<name>` or `from benchmarks import <name>` (tests/test_offline_harness.py: the offline one)."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_figure, cli_env

from benchmarks import atari, minatar, online
from benchmarks.launch import algorithm_module
from benchmarks.results import SCORES_COLUMNS, append_scores
from rlzoo.errors import RlzooError

# gymnax's MinAtar writes ints into bool planes, which jax 0.10 warns about at every trace.
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- results files


def test_append_scores_writes_one_row_per_seed_and_refuses_another_format(tmp_path):
    path = tmp_path / "scores.csv"
    summary = {"algorithm": "sac", "task": "Pendulum-v1", "data_source": "online", "final_scores": {0: -150.0},
               "steps": 10, "wall_s": 1.0, "device": "cpu", "commit": "abc", "date": "d", "jax": "0.10.2"}
    append_scores(path, summary, "cfg.json")
    append_scores(path, {**summary, "final_scores": {1: -120.04}}, "cfg.json")
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows[0] == SCORES_COLUMNS
    assert rows[1][0] == "sac" and rows[1][-2] == "0.10.2" and rows[1][5] == "-150.0"
    assert rows[1][-1] == ""  # a summary that names no host (written before summaries did)
    assert rows[2][3] == "1" and rows[2][5] == "-120.04" and len(rows) == 3
    append_scores(path, {**summary, "final_scores": {2: 1.0}, "host": "node7", "launcher": "ray"}, "cfg.json")
    assert path.read_text().splitlines()[-1].endswith(",0.10.2,ray@node7")
    # Another schema (e.g. an older one without the ran_on or jax column) is refused, not appended to.
    old = tmp_path / "old.csv"
    for columns in (SCORES_COLUMNS[:-1], SCORES_COLUMNS[:-2]):
        old.write_text(",".join(columns) + "\n")
        with pytest.raises(RlzooError, match="not those of a scores CSV"):
            append_scores(old, summary, "cfg.json")
        assert old.read_text() == ",".join(columns) + "\n"


def test_committed_scores_parse_as_one_complete_row_per_line():
    """results/scores.csv, which the reports read: every record has every column, one line ending throughout."""
    text = (REPO / "results" / "scores.csv").read_bytes()
    assert b"\r" not in text.replace(b"\r\n", b"")
    with (REPO / "results" / "scores.csv").open(newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == SCORES_COLUMNS
        rows = list(reader)
    assert rows and all(len(r) == len(SCORES_COLUMNS) and r[0] and r[SCORES_COLUMNS.index("config")] for r in rows)


# ---------------------------------------------------------------------------------------------- speed


def test_speed_rows_name_their_benchmark_and_unit(jax_cache_dir, tmp_path):
    """python -m benchmarks.speed: PQN is timed in env steps/s (env_throughput), an offline update in updates/s."""
    out = tmp_path / "speed.csv"
    common = ["--repeats", "1", "--matmul-size", "64", "--out", str(out)]
    for args in (["--algorithm", "pqn", "--updates", "1"],
                 ["--algorithm", "iql", "--updates", "5", "--dataset-size", "1000", "--batch-size", "32"]):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", *args, *common], env=cli_env(jax_cache_dir),
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [(r["benchmark"], r["algorithm"], r["unit"]) for r in rows] == [
        ("env_throughput", "pqn", "env_steps/s"), ("update_throughput", "iql", "updates/s")]
    assert all(float(r["value"]) > 0 for r in rows)


@pytest.mark.slow  # ~40 s on the 2-core CI: two checkouts timed in rounds; a maintainer's tool, not a user path
def test_speed_against_another_checkout_interleaves_rounds_and_records_the_ratio(jax_cache_dir, tmp_path):
    """--against: both checkouts (here the same one twice) timed in subprocesses, rounds interleaved; two rows,
    the other checkout's and this one's with the other's commit and value as its baseline and their ratio. A
    folder that is not a checkout is refused in one paragraph before anything is timed."""
    out = tmp_path / "speed.csv"
    tiny = ["--algorithm", "iql", "--updates", "2", "--dataset-size", "1000", "--batch-size", "32", "--repeats", "1",
            "--matmul-size", "64", "--rounds", "2", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", *tiny, "--against", str(REPO)],
                          env=cli_env(jax_cache_dir), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[speed] round ") == 4  # 2 rounds x 2 checkouts
    base, mine = list(csv.DictReader(out.open()))
    assert base["algorithm"] == mine["algorithm"] == "iql" and base["baseline"] == ""
    assert mine["baseline"] == f"{base['commit']}={base['value']}"
    assert float(mine["ratio_to_baseline"]) == pytest.approx(float(mine["value"]) / float(base["value"]), abs=2e-3)
    assert mine["notes"].startswith("same-run A/B, 2 interleaved rounds") and "A/B baseline: checkout" in base["notes"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", *tiny, "--against", str(tmp_path)],
                          env=cli_env(jax_cache_dir), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not a checkout of this repository" in " ".join(proc.stderr.split()) and "\n\n" not in proc.stderr.strip()


# ---------------------------------------------------------------------------------------------- online (SAC)


def test_online_launch_skips_finished_runs_and_refuses_another_length(tmp_path, capsys):
    """`python -m benchmarks.online launch` again after a run finished must not run (and record) it a second time."""
    done = tmp_path / online.run_name("Hopper-v5", 0)
    done.mkdir()
    (done / "summary.json").write_text("{}")
    args = argparse.Namespace(runs_root=str(tmp_path), envs=["Hopper-v5"], seed=0, total_steps=1_000_000)
    online.launch(args)
    assert "finished already" in capsys.readouterr().out and not (tmp_path / "sac-Hopper-v5-s0.log").exists()
    (done / "summary.json").unlink()
    (done / "config.json").write_text(json.dumps({"total_steps": 300_000}))
    with pytest.raises(SystemExit, match="a run of 300,000 steps, not --total-steps 1,000,000"):
        online.launch(args)
    # An unknown env is refused before anything starts in the background.
    typo = argparse.Namespace(runs_root=str(tmp_path / "other"), envs=["Hopper-v5", "Antt-v5"], seed=0,
                              total_steps=1_000_000)
    with pytest.raises(SystemExit, match="unknown environment 'Antt-v5'. Close matches: Ant-v5"):
        online.launch(typo)
    assert not (tmp_path / "other").exists()


def test_online_collect_records_a_finished_run_once_and_lists_an_unfinished_one(tmp_path, monkeypatch):
    """`collect` records finished runs (score row pointing at the curve folder copied into results/curves) exactly
    once, and lists unfinished ones as in progress without a score row."""
    curves = tmp_path / "curves"
    monkeypatch.setattr(online, "CURVES", curves)
    runs = tmp_path / "runs"
    for name, done in (("sac-Hopper-v5-s0", True), ("sac-Ant-v5-s0", False)):
        d = runs / name
        d.mkdir(parents=True)
        (d / "eval.csv").write_text("step,seed,return_mean,return_std,score\n10000,0,100.0,5.0,100.0\n"
                                    "20000,0,250.0,9.0,250.0\n")
        (d / "config.json").write_text(json.dumps({"env": name[4:-3], "total_steps": 20000}))
        if done:
            (d / "summary.json").write_text(json.dumps({
                "algorithm": "sac", "task": "Hopper-v5", "data_source": "online", "final_scores": {"0": 250.0},
                "steps": 20000, "wall_s": 12.0, "device": "cpu", "commit": "abc1234", "date": "2026-11-26T00:00:00Z",
                "jax": "0.10.2"}))
    scores = tmp_path / "scores.csv"
    args = argparse.Namespace(runs_root=str(runs), scores_csv=str(scores))
    online.collect(args)
    online.collect(args)  # again: nothing is recorded twice
    rows = list(csv.DictReader(scores.open()))
    recorded = [(r["task"], r["score"], r["config"]) for r in rows]
    assert recorded == [("Hopper-v5", "250.0", "sac-Hopper-v5-s0-20k/config.json")]
    assert (curves / "sac-Hopper-v5-s0-20k" / "eval.csv").exists() and (curves / "sac-Ant-v5-s0.png").exists()
    progress = list(csv.DictReader((curves / "in_progress.csv").open()))
    assert progress == [{"run": "sac-Ant-v5-s0", "steps_reached": "20000", "latest_return": "250.0"}]


# ---------------------------------------------------------------------------------------------- MinAtar


def fake_finished_run(run_dir: Path, task: str, scores: dict) -> None:
    """What an algorithm process leaves in its run directory when it finishes (summary, config, curve)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"env": task}))
    (run_dir / "eval.csv").write_text("step,seed,return_mean\n" + "".join(
        f"1024,{seed},{score}\n" for seed, score in scores.items()))
    (run_dir / "summary.json").write_text(json.dumps({
        "algorithm": "pqn", "task": task, "data_source": "online", "final_scores": scores, "steps": 1024,
        "wall_s": 3.0, "device": "cpu", "commit": "abc1234", "date": "2026-12-01T00:00:00Z", "jax": "0.10.2"}))


def test_minatar_run_records_each_finished_run_from_its_summary(tmp_path, monkeypatch):
    """`run` starts pqn.py without --scores-csv and records the run from its summary.json once the process has
    exited (one row per seed, the curve folder beside); running it again records nothing twice."""
    monkeypatch.setattr(minatar, "CURVES", tmp_path / "curves")
    monkeypatch.setattr(minatar, "SCORES", tmp_path / "scores.csv")
    commands = []

    def fake_process(cmd, check, cwd):  # the algorithm process: it trains and writes its run directory
        commands.append(cmd)
        run_dir = Path(cmd[cmd.index("--run-dir") + 1])
        fake_finished_run(run_dir, cmd[cmd.index("--env") + 1], {"0": 1.5, "1": 2.5})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(minatar.subprocess, "run", fake_process)
    argv = ["run", "--games", "Breakout-MinAtar", "--num-seeds", "2", "--total-steps", "1024", "--decay-steps",
            "1024", "--runs-root", str(tmp_path / "runs")]
    minatar.main(argv)
    minatar.main(argv)  # finished already: not started, not recorded again
    assert len(commands) == 1 and not any("scores" in tok for tok in commands[0])
    assert commands[0][1] == str(REPO / "algorithms" / "pqn.py")
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    name = "pqn-Breakout-MinAtar-s0-n2-1024-decay1024"
    assert [(r["task"], r["seed"], r["score"], r["config"]) for r in rows] == [
        ("Breakout-MinAtar", "0", "1.5", f"{name}/config.json"),
        ("Breakout-MinAtar", "1", "2.5", f"{name}/config.json")]
    assert (tmp_path / "curves" / name / "summary.json").exists()


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64:UserWarning")  # gymnax's Freeway asks for int64
def test_minatar_test_estimators_count_episodes_as_each_implementation_does():
    """benchmarks/minatar.py estimators: rlzoo's test (first episode per env) and purejaxql's (all episodes
    finished within one step limit) on the same episodes. Breakout's untrained episodes are short, so envs
    finish several; Freeway's are cut at its 2,500-step limit, so both estimators read the same one."""
    import gymnax

    bench = minatar
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    for game, several in (("Breakout-MinAtar", True), ("Freeway-MinAtar", False)):
        env, env_params = gymnax.make(game)
        network = algorithm_module("pqn").make_network(env.num_actions)
        obs = jnp.zeros((1, *env.observation_space(env_params).shape))
        params = jax.vmap(network.init, in_axes=(0, None))(keys, obs)
        first, window, episodes, unfinished = bench.score_both_ways(network, game, params, keys, num_envs=4)
        assert first.shape == (2,) and not unfinished.any()
        if several:
            assert (episodes > 4).all()
        else:
            np.testing.assert_array_equal(episodes, 4)
            np.testing.assert_allclose(first, window)


def test_minatar_collect_plots_runs_and_lists_unfinished(tmp_path, monkeypatch, plotted_labels):
    """collect: copies a game's eval.csv into the curves folder, draws the games that have runs, overlays a
    reference curve of the same settings, and lists a run without summary.json as unfinished."""
    bench = minatar
    curves = tmp_path / "curves"
    monkeypatch.setattr(bench, "CURVES", curves)
    args = bench.argparse.Namespace(runs_root=str(tmp_path / "runs"), seed=0, num_seeds=2, total_steps=2048,
                                    decay_steps=4096, obs_div_255=False, games=bench.GAMES, tag="",
                                    from_results=False)
    run = bench.run_dir(tmp_path / "runs", "Breakout-MinAtar", args)
    run.mkdir(parents=True)
    (run / "eval.csv").write_text("step,seed,return_mean\n1024,0,1.0\n1024,1,3.0\n2048,0,2.0\n2048,1,6.0\n")
    curves.mkdir()
    (curves / "purejaxql-pqn-Breakout-MinAtar-s0-n3-2048-decay4096.csv").write_text("step,seed,return_mean\n2048,0,1\n")
    bench.collect(args)
    assert (curves / f"{run.name}.csv").read_text() == (run / "eval.csv").read_text()
    assert_figure(curves / "pqn-minatar-s0-n2-2048-decay4096.png")
    # The game's two seeds' mean at 2 evaluations, and the reference's one evaluation.
    assert plotted_labels == [("rlzoo, mean of 2 seeds", 2), ("purejaxql, 1 seed", 1)]
    progress = (curves / "pqn-minatar-s0-n2-2048-decay4096-in-progress.csv").read_text().splitlines()
    assert progress == ["task,steps_reached,latest_mean_return,seeds", "Breakout-MinAtar,2048,4.0,2"]
    (run / "summary.json").write_text("{}")
    bench.collect(args)
    assert not (curves / "pqn-minatar-s0-n2-2048-decay4096-in-progress.csv").exists()


def test_minatar_tagged_runs_get_their_own_names(tmp_path, monkeypatch):
    """A GPU run of the same settings (--tag, e.g. gpu-h200) gets its own run folder, curve and figure, and
    leaves the CPU run's files alone."""
    bench = minatar
    monkeypatch.setattr(bench, "CURVES", tmp_path / "curves")
    common = dict(runs_root=str(tmp_path / "runs"), seed=0, num_seeds=1, total_steps=1024, decay_steps=1024,
                  obs_div_255=False, games=["Breakout-MinAtar"], from_results=False)
    for tag, value in (("", 1.0), ("gpu-h200", 2.0)):
        args = bench.argparse.Namespace(**common, tag=tag)
        run = bench.run_dir(tmp_path / "runs", "Breakout-MinAtar", args)
        run.mkdir(parents=True)
        (run / "eval.csv").write_text(f"step,seed,return_mean\n1024,0,{value}\n")
        bench.collect(args)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "pqn-Breakout-MinAtar-s0-n1-1024-decay1024", "pqn-Breakout-MinAtar-s0-n1-1024-decay1024-gpu-h200"]
    curves = tmp_path / "curves"
    assert (curves / "pqn-Breakout-MinAtar-s0-n1-1024-decay1024.csv").read_text().endswith("1024,0,1.0\n")
    assert (curves / "pqn-Breakout-MinAtar-s0-n1-1024-decay1024-gpu-h200.csv").read_text().endswith("1024,0,2.0\n")
    assert_figure(curves / "pqn-minatar-s0-n1-1024-decay1024-gpu-h200.png")


def test_atari_figure_holds_every_game_of_its_settings(tmp_path, monkeypatch):
    """The figure draws every game run with the same settings, also those a second process (a game side by side)
    wrote, but not a run of other settings."""
    monkeypatch.setattr(atari, "CURVES", tmp_path)
    settings = "n1-32768-decay32768-eval8x27000"
    for game, other in (("Breakout", settings), ("Pong", settings), ("Seaquest", settings + "-host")):
        (tmp_path / f"pqn-atari-{game}-{other}.csv").write_text(
            "step,seed,episode_return\n16384,0,1.0\n32768,0,2.0\n")
        (tmp_path / f"pqn-atari-{game}-{other}-eval.csv").write_text("step,seed,return_mean\n32768,0,2.0\n")
    import matplotlib.axes

    titles, original = [], matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, title, *a, **k: titles.append(title) or original(ax, title, *a, **k))
    atari.plot(settings)
    assert titles == ["Breakout", "Pong"]
    assert_figure(tmp_path / f"pqn-atari-{settings}.png")


def test_minatar_collect_from_results_redraws_without_the_run_folders(tmp_path, monkeypatch):
    """benchmarks/minatar.py collect --from-results: the figure is drawn from the curves already in results/curves
    (runs made on another machine) together with the reference curve of the same length, nothing there is
    rewritten or removed (an in-progress list included), and the flag is refused outside collect."""
    bench = minatar
    monkeypatch.setattr(bench, "CURVES", tmp_path)
    settings = ["--num-seeds", "2", "--total-steps", "163840", "--decay-steps", "163840", "--tag", "gpu"]
    (tmp_path / "pqn-Breakout-MinAtar-s0-n2-163840-decay163840-gpu.csv").write_text(
        "step,seed,return_mean\n81920,0,1.0\n81920,1,3.0\n163840,0,5.0\n163840,1,7.0\n")
    reference = tmp_path / "purejaxql-pqn-Breakout-MinAtar-s0-n1-163840-decay163840.csv"
    reference.write_text("step,seed,return_mean\n81920,0,2.0\n163840,0,6.0\n")
    (tmp_path / "pqn-minatar-s0-n2-163840-decay163840-gpu-in-progress.csv").write_text("task,steps_reached\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    read, genfromtxt = [], np.genfromtxt

    def recording_genfromtxt(path, *args, **kwargs):
        read.append(Path(path))
        return genfromtxt(path, *args, **kwargs)

    monkeypatch.setattr(bench.np, "genfromtxt", recording_genfromtxt)
    bench.main(["collect", *settings, "--from-results", "--runs-root", str(tmp_path / "no-runs-here")])
    figure = tmp_path / "pqn-minatar-s0-n2-163840-decay163840-gpu.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reference in read
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p != figure} == before
    with pytest.raises(SystemExit):
        bench.main(["run", *settings, "--from-results"])




def test_speed_writes_results_only_when_asked_to_record():
    """A speed run prints its rows; only --record (or an explicit --out) appends them to a file."""
    from benchmarks import speed

    assert speed.parse_args(["--algorithm", "iql"]).out == ""
    assert speed.parse_args(["--algorithm", "iql", "--record"]).out == str(REPO / "results" / "speed.csv")
    assert speed.parse_args(["--algorithm", "iql", "--out", "/tmp/x.csv"]).out == "/tmp/x.csv"
    with pytest.raises(SystemExit):
        speed.parse_args(["--algorithm", "iql", "--record", "--out", "/tmp/x.csv"])
