"""benchmarks/offline.py and offline_report.py: a sweep records one row per seed once, resumes a killed run,
and the report keeps official and locally built data apart and gets the numbers right; bad input gets one
paragraph."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PENDULUM_ID, assert_figure, checkpoint_steps, cli_env

from benchmarks import offline, offline_report, record_run
from benchmarks.results import SCORES_COLUMNS

REPO = Path(__file__).resolve().parents[1]
OFFLINE = [sys.executable, "-m", "benchmarks.offline"]  # the command users run, from the repository root

# A tiny IQL on the Pendulum controller dataset, 2 seeds x 400 steps in chunks of 200 with a checkpoint after
# each: the same compiled programs as test_iql's two-seed run, so a warm session compilation cache is reused.
TINY = [
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
    "400",
]
STEPS = 400


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_clean_failure(proc, *needles: str) -> str:
    """Exit code 2, no traceback, and the needles in the (whitespace-normalized) one-paragraph error."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    paragraph = proc.stderr.split("error: ", 1)[1].strip()
    assert "\n\n" not in paragraph
    flat = " ".join(paragraph.split())
    for needle in needles:
        assert needle in flat, flat
    return flat


# ---------------------------------------------------------------------------------------------- the sweep


def test_sweep_resumes_a_killed_run_and_records_each_seed_once(
    pendulum_store, jax_cache_dir, tmp_path, capsys, monkeypatch
):
    env = cli_env(jax_cache_dir, pendulum_store)
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = [
        "run",
        "--algos",
        "iql",
        "--datasets",
        PENDULUM_ID,
        "--num-seeds",
        "2",
        "--total-steps",
        str(STEPS),
        "--runs-root",
        str(runs),
        "--results",
        str(results),
        "--",
        *TINY,
    ]
    run_dir = runs / offline.run_name("iql", PENDULUM_ID, 0, 2, STEPS)
    scores_csv = results / "scores.csv"

    # 1. The sweep is killed mid-run, harness and algorithm process together (as on a reboot).
    proc = subprocess.Popen(
        [*OFFLINE, *argv],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while not checkpoint_steps(run_dir):
            if proc.poll() is not None:
                pytest.fail("the sweep ended before it could be killed: " + proc.stdout.read().decode()[-3000:])
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert checkpoint_steps(run_dir) and max(checkpoint_steps(run_dir)) < STEPS
    assert not (run_dir / "summary.json").exists()
    assert not scores_csv.exists()

    # 2. The same command (here in-process; the algorithm still runs as its own process) resumes it from its
    # checkpoint and records one row per seed.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert offline.main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/1] iql on " + PENDULUM_ID in out and "resuming from its newest checkpoint" in out
    assert "resumed at step 200" in (run_dir / "harness.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_rows(scores_csv)
    assert [(r["algorithm"], r["task"], r["data_source"], r["seed"], r["steps"]) for r in rows] == [
        ("iql", PENDULUM_ID, "minari", "0", str(STEPS)),
        ("iql", PENDULUM_ID, "minari", "1", str(STEPS)),
    ]
    for r in rows:
        assert float(r["score"]) == pytest.approx(summary["final_scores"][r["seed"]], abs=1e-3)
        assert r["jax"] and r["commit"] and r["device"] and float(r["wall_s"]) > 0
        assert r["config"] == f"{run_dir.name}/config.json"
    curve = results / "curves" / run_dir.name
    assert (curve / "eval.csv").read_text() == (run_dir / "eval.csv").read_text()
    assert "final scores: seed 0" in out and "seed 1" in out

    # 3. Re-running trains nothing and appends nothing.
    log_before = (run_dir / "harness.log").read_text()
    assert offline.main(argv) == 0
    assert "finished earlier (already recorded)" in capsys.readouterr().out
    assert read_rows(scores_csv) == rows
    assert (run_dir / "harness.log").read_text() == log_before

    # 4. The report's table holds the mean over the two seeds, and the PNGs exist. The tiny run is named by
    # the options it sets against IQL's defaults.
    assert offline.main(["report", "--results", str(results), "--reps", "200"]) == 0
    table = (results / "offline" / "table.md").read_text()
    scores = np.array([summary["final_scores"][s] for s in ("0", "1")])
    label = "iql (batch_size=64, eval_episodes=1, eval_every=400, hidden_dims=[32, 32], max_action=2.0)"
    expected = (
        f"| {PENDULUM_ID} | {label} | {STEPS} | {offline_report.fmt(scores.mean())} ± "
        f"{offline_report.fmt(scores.std())} | 2 (0, 1) |"
    )
    assert expected in table, table
    # Named as a variant of IQL, it is drawn apart from the algorithms at their defaults (there are none here).
    assert_figure(results / "offline" / "aggregate-other.png")
    assert not (results / "offline" / "aggregate.png").exists()
    curves = list((results / "offline").glob("curve-minari-*.png"))
    assert curves
    for figure in curves:
        assert_figure(figure)


def test_recording_is_idempotent_and_never_overwrites_another_runs_curve(tmp_path):
    def fake_run(name: str, date: str, seeds=("0",)) -> Path:
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        summary = {
            "algorithm": "iql",
            "task": "hopper-medium",
            "data_source": "local",
            "final_scores": {s: 50.0 + int(s) for s in seeds},
            "steps": 1000,
            "wall_s": 3.0,
            "device": "cpu",
            "commit": "abc",
            "date": date,
            "jax": "0.10.2",
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "eval.csv").write_text(f"step,seed,return_mean,return_std,score\n1000,0,1.0,0.0,{date[-3:-1]}\n")
        return run_dir

    scores, curves = tmp_path / "results" / "scores.csv", tmp_path / "results" / "curves"
    first = fake_run("a/iql-x", "2026-01-01T00:00:01Z")
    assert record_run.record(first, scores, curves) == curves / "iql-x"
    assert record_run.record(first, scores, curves) is None  # recorded already
    assert len(read_rows(scores)) == 1
    # Another run of the same name (re-run after deleting the run dir): its own rows and its own curve folder.
    second = fake_run("b/iql-x", "2026-01-02T00:00:02Z")
    assert record_run.record(second, scores, curves) == curves / "iql-x-2"
    assert (curves / "iql-x" / "eval.csv").read_text() == (first / "eval.csv").read_text()
    assert [r["config"] for r in read_rows(scores)] == ["iql-x/config.json", "iql-x-2/config.json"]
    # A recording interrupted after some of a run's seeds is completed, each seed once.
    third = fake_run("c/iql-y", "2026-01-03T00:00:03Z", seeds=("0", "1", "2"))
    summary = json.loads((third / "summary.json").read_text())
    record_run.append_scores(scores, {**summary, "final_scores": {"0": 50.0}}, "iql-y/config.json")
    assert not record_run.already_recorded(scores, summary)
    assert record_run.record(third, scores, curves) == curves / "iql-y"
    assert [r["seed"] for r in read_rows(scores) if r["date"] == summary["date"]] == ["0", "1", "2"]
    assert record_run.record(third, scores, curves) is None


# ---------------------------------------------------------------------------------------------- the report


def write_scores(path: Path, rows: list[tuple], builds: dict | None = None) -> None:
    """rows: (algorithm, task, data_source, seed, steps, score, config ref); each run's dataset.json holds
    builds[ref] (reference scores 0 / 1 and data return 0 unless given; None: no dataset.json)."""
    builds = builds or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SCORES_COLUMNS)
        for algo, task, source, seed, steps, score, ref in rows:
            w.writerow(
                [
                    algo,
                    task,
                    source,
                    seed,
                    steps,
                    score,
                    "last",
                    10.0,
                    "cpu: test",
                    "abc",
                    "2026-01-01T00:00:00Z",
                    f"{ref}/config.json",
                    "0.10.2",
                ]
            )
            curve = path.parent / "curves" / ref / "eval.csv"
            curve.parent.mkdir(parents=True, exist_ok=True)
            build = builds.get(ref, {"ref_min_score": 0.0, "ref_max_score": 1.0, "return_mean": 0.0})
            if build is not None:
                (curve.parent / "dataset.json").write_text(json.dumps({"dataset": task, **build}))
            if not curve.exists():
                curve.write_text("step,seed,return_mean,return_std,score\n")
            with curve.open("a") as c:
                c.write(f"{steps // 2},{seed},0,0,{score / 2}\n{steps},{seed},0,0,{score}\n")


def test_report_numbers_and_official_vs_local(tmp_path):
    results = tmp_path / "results"
    rows = [("iql", "halfcheetah-medium", "local", s, 200000, v, "l200") for s, v in enumerate([40, 42, 47])]
    rows += [("iql", "halfcheetah-medium", "local", 0, 50000, 30, "l50")]
    rows += [("iql", "hopper-medium-expert", "local", s, 200000, v, "hme") for s, v in enumerate([80, 90, 100])]
    rows += [("iql", "halfcheetah-medium", "official", s, 200000, v, "o200") for s, v in enumerate([60, 70])]
    rows += [("sac", "HalfCheetah-v5", "online", 0, 1000000, 9000, "sac")]
    # Runs on another build of their dataset (other reference scores) or an unknown one are left out.
    rows += [("iql", "halfcheetah-medium", "local", 0, 200000, 11, "old")]
    rows += [("iql", "hopper-medium-expert", "local", 0, 200000, 12, "unknown")]
    # A composite's run records each part's return (over complete episodes); its own return_mean weights the
    # parts by episodes, datasets.csv by steps, so only the parts identify the build.
    rows += [("iql", "hopper-medium-expert", "local", 0, 200000, 13, "hme-old")]
    me_parts = [{"return_mean": 1195.6}, {"return_mean": 3195.8}]
    me = {"ref_min_score": 0.0, "ref_max_score": 1.0, "return_mean": 1723.2, "parts": me_parts}
    stale = {"l200": {"ref_min_score": 0.0, "ref_max_score": 1.0, "return_mean": 2413.9},
             "l50": {"ref_min_score": 0.0, "ref_max_score": 1.0, "return_mean": 2413.9}, "hme": me,
             "old": {"ref_min_score": 0.0, "ref_max_score": 2.0, "return_mean": 2413.9}, "unknown": None,
             "hme-old": {**me, "parts": [{"return_mean": 1190.6}, {"return_mean": 3195.8}]}}
    write_scores(results / "scores.csv", rows, stale)
    (results / "datasets.csv").write_text(
        "dataset,env_id,kind,source,policy,seed,episodes,steps,return_mean,return_std,ref_min_score,ref_max_score,"
        "normalized_mean\n"
        "halfcheetah-medium,HalfCheetah-v5,medium,local,p,0,1000,1000000,2413.9,0,0,1,34.7\n"
        "hopper-medium,Hopper-v5,medium,local,p,0,1000,1000000,1195.6,0,0,1,40.0\n"
        "hopper-expert,Hopper-v5,expert,local,p,0,1000,3000000,3195.8,0,0,1,100.0\n"
    )

    out = results / "offline"
    out.mkdir(parents=True)
    (out / "curve-local-walker2d-medium-replay.png").write_bytes(b"a figure from an earlier report")
    assert offline.main(["report", "--results", str(results), "--reps", "300"]) == 0
    # The earlier report's figure of a task that has no run in the table any more is gone.
    assert not (out / "curve-local-walker2d-medium-replay.png").exists()
    table = (out / "table.md").read_text()
    local, official = table.split("## Data: locally built stand-ins, not the official D4RL files")[1].split(
        "## Data: official"
    )
    # Mean ± (population) std over seeds; steps kept apart; medium-expert's data score = parts weighted by steps.
    assert "| halfcheetah-medium | iql | 200,000 | 43.0 ± 2.9 | 3 (0, 1, 2) | 34.7 |" in local
    assert "| halfcheetah-medium | iql | 50,000 | 30.0 ± 0.0 | 1 (0) | 34.7 |" in local
    assert "| hopper-medium-expert | iql | 200,000 | 90.0 ± 8.2 | 3 (0, 1, 2) | 85.0 |" in local
    assert "| halfcheetah-medium | iql | 200,000 | 65.0 ± 5.0 | 2 (0, 1) | — |" in official
    assert "65.0" not in local and "43.0" not in official and "HalfCheetah-v5" not in table
    official, left_out = official.split("## Left out")
    assert "11.0" not in local + official and "12.0" not in local + official and "13.0" not in local + official
    assert "| halfcheetah-medium | iql | 200,000 | 11.0 ± 0.0 | 1 (0) | `old` | an earlier build" in left_out
    assert "| hopper-medium-expert | iql | 200,000 | 12.0 ± 0.0 | 1 (0) | `unknown` | no dataset record" in left_out
    assert "| hopper-medium-expert | iql | 200,000 | 13.0 ± 0.0 | 1 (0) | `hme-old` | an earlier build (data " \
        "return hopper-medium 1190.6, hopper-expert 3195.8" in left_out

    agg_rows = read_rows(out / "aggregate.csv")
    assert {r["task_set"] for r in agg_rows} == {"all"}  # one algorithm: nothing to compare
    agg = {(r["data_source"], r["steps"], r["metric"]): r for r in agg_rows}
    assert len(agg) == len(agg_rows) and set(agg) == {
        (s, n, m)
        for s, n in [("local", "200000"), ("local", "50000"), ("official", "200000")]
        for m in ("IQM", "median", "mean")
    }
    # local 200k: 2 tasks x 3 seeds; IQM of [40, 42, 47, 80, 90, 100] = mean of the middle four.
    assert float(agg[("local", "200000", "mean")]["value"]) == pytest.approx((43 + 90) / 2)
    assert float(agg[("local", "200000", "IQM")]["value"]) == pytest.approx((42 + 47 + 80 + 90) / 4)
    assert agg[("local", "200000", "IQM")]["task_list"] == "halfcheetah-medium;hopper-medium-expert"
    assert agg[("local", "200000", "IQM")]["runs_per_task"] == "3"
    assert float(agg[("official", "200000", "mean")]["value"]) == pytest.approx(65.0)
    assert agg[("official", "200000", "mean")]["tasks"] == "1"
    for r in agg.values():
        assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
    for png in (
        "aggregate.png",
        "curve-local-halfcheetah-medium.png",
        "curve-local-hopper-medium-expert.png",
        "curve-official-halfcheetah-medium.png",
    ):
        assert_figure(out / png)


def test_report_keeps_other_hyperparameters_apart_and_counts_a_seed_once(tmp_path):
    results = tmp_path / "results"
    rows = [("iql", "hopper-medium", "local", s, 1000, v, "base") for s, v in enumerate([40, 42, 44])]
    rows += [("iql", "hopper-medium", "local", s, 1000, v, "beta10") for s, v in enumerate([60, 62])]
    rows += [("iql", "hopper-medium", "local", 0, 1000, 50, "again")]  # seed 0 of the base config, recorded later
    write_scores(results / "scores.csv", rows)
    for ref, config in {"base": {"beta": 3.0, "expectile": 0.7}, "beta10": {"beta": 10.0, "expectile": 0.7},
                        "again": {"beta": 3.0, "run_dir": "elsewhere", "max_action": 1.0}}.items():
        (results / "curves" / ref / "config.json").write_text(json.dumps({**config, "seed": 0}))
    assert offline.main(["report", "--results", str(results), "--reps", "100"]) == 0
    table = (results / "offline" / "table.md").read_text()
    assert "| hopper-medium | iql | 1,000 | 45.3 ± 3.4 | 3 (0, 1, 2) | — |" in table  # 50, 42, 44
    assert "| hopper-medium | iql (beta=10.0) | 1,000 | 61.0 ± 1.0 | 2 (0, 1) | — |" in table


def test_report_names_variants_by_the_files_defaults_per_task(tmp_path):
    """A variant is named by how its config differs from what the algorithm file trains that task with by
    default (its Config with its TASKS table's per-task settings), not by which configuration ran more."""
    results = tmp_path / "results"
    rows = [("td3_bc", "hopper-medium", "local", s, 1000, v, "paper") for s, v in enumerate([40, 42])]
    rows += [("td3_bc", "hopper-medium", "local", s, 1000, v, "alpha10") for s, v in enumerate([50, 60, 70])]
    rows += [("cql", "hopper-medium", "local", 0, 1000, 30, "cql-hm"), ("cql", "walker2d-medium", "local", 0, 1000, 20,
                                                                        "cql-wm")]
    write_scores(results / "scores.csv", rows)
    configs = {"paper": {"alpha": 2.5, "policy_noise": 0.2}, "alpha10": {"alpha": 10.0, "policy_noise": 0.2},
               "cql-hm": {"scale_rewards": True}, "cql-wm": {"scale_rewards": True}}  # cql.Config.TASKS: hopper-medium
    for ref, config in configs.items():
        (results / "curves" / ref / "config.json").write_text(json.dumps(config))
    assert offline.main(["report", "--results", str(results), "--reps", "100"]) == 0
    table = (results / "offline" / "table.md").read_text()
    assert "| hopper-medium | td3_bc | 1,000 | 41.0 ± 1.0 | 2 (0, 1) | — |" in table
    assert "| hopper-medium | td3_bc (alpha=10.0) | 1,000 | 60.0 ± 8.2 | 3 (0, 1, 2) | — |" in table
    assert "| hopper-medium | cql | 1,000 | 30.0 ± 0.0 | 1 (0) | — |" in table
    assert "| walker2d-medium | cql (scale_rewards=True) | 1,000 | 20.0 ± 0.0 | 1 (0) | — |" in table


def test_report_adds_the_mean_of_the_last_ten_evaluations(tmp_path):
    """Besides the last evaluation, each seed's mean over its last 10 evaluations up to the run's recorded
    length (the TD3+BC paper's protocol), read from its curve; a curve with fewer evaluations gets none."""
    results = tmp_path / "results"
    rows = [("td3_bc", "hopper-medium", "local", s, 1000, v, "long") for s, v in enumerate([40, 44])]
    rows += [("td3_bc", "walker2d-medium", "local", 0, 1000, 20, "short")]  # 2 evaluations only
    write_scores(results / "scores.csv", rows)
    # 12 evaluations per seed: one before and one after the ten that count (steps 100..1000, score step / 10
    # + 5 * seed, so means 55 and 60), each far off so that counting it would show.
    lines = ["step,seed,return_mean,return_std,score"]
    for seed in (0, 1):
        lines += [f"50,{seed},0,0,1000"] + [f"{t},{seed},0,0,{t / 10 + 5 * seed}" for t in range(100, 1001, 100)]
        lines += [f"1100,{seed},0,0,-1000"]
    (results / "curves" / "long" / "eval.csv").write_text("\n".join(lines) + "\n")
    assert offline.main(["report", "--results", str(results), "--reps", "100"]) == 0
    table = (results / "offline" / "table.md").read_text()
    assert "| hopper-medium | td3_bc | 1,000 | 42.0 ± 2.0 | 2 (0, 1) | — |" in table  # the last evaluations
    assert "| hopper-medium | td3_bc | 1,000 | 57.5 ± 2.5 (last10) | 2 (0, 1) | — |" in table
    assert "(last10) | 1 (0)" not in table  # walker2d-medium's short curve
    agg = {(r["score_kind"], r["metric"]): r for r in read_rows(results / "offline" / "aggregate.csv")}
    assert agg[("last10", "mean")]["task_list"] == "hopper-medium"
    assert float(agg[("last10", "mean")]["value"]) == pytest.approx(57.5)
    assert agg[("last", "mean")]["task_list"] == "hopper-medium;walker2d-medium"


def test_report_compares_algorithms_on_the_tasks_they_share(tmp_path):
    """Two algorithms on different task sets: a side-by-side table, and besides each one's aggregate over its
    own tasks, one over only the tasks both have (aggregates over different task sets do not compare). A
    hyperparameter variant run on one task does not narrow the shared set; equal task sets need no second
    aggregate."""
    results = tmp_path / "results"
    scores = {("iql", "halfcheetah-medium"): [40, 42, 44], ("iql", "hopper-medium"): [60, 62, 64],
              ("iql", "walker2d-medium"): [10, 12, 14],
              ("td3_bc", "halfcheetah-medium"): [50, 52, 54], ("td3_bc", "hopper-medium"): [70, 72, 74]}

    def report(scores: dict, variants: dict | None = None) -> tuple[str, dict]:
        rows = [(algo, task, "local", seed, 1000, v, f"{algo}-{task}")
                for (algo, task), values in scores.items() for seed, v in enumerate(values)]
        write_scores(results / "scores.csv", rows)
        for (algo, task), config in (variants or {}).items():
            (results / "curves" / f"{algo}-{task}" / "config.json").write_text(json.dumps(config))
        assert offline.main(["report", "--results", str(results), "--reps", "200"]) == 0
        rows = read_rows(results / "offline" / "aggregate.csv")
        agg = {(r["algorithm"], r["task_set"], r["metric"]): r for r in rows}
        assert len(agg) == len(rows)
        return (results / "offline" / "table.md").read_text(), agg

    table, agg = report(scores)
    assert "| dataset | iql | td3_bc | behaviour data |" in table
    assert "| hopper-medium | 62.0 ± 1.6 (3) | 72.0 ± 1.6 (3) | — |" in table
    assert "| walker2d-medium | 12.0 ± 1.6 (3) | — | — |" in table
    assert set(agg) == {(a, t, m) for a in ("iql", "td3_bc") for t in ("all", "common") for m in offline_report.METRICS}
    assert float(agg[("iql", "all", "mean")]["value"]) == pytest.approx((42 + 62 + 12) / 3)
    assert float(agg[("iql", "common", "mean")]["value"]) == pytest.approx((42 + 62) / 2)
    assert agg[("iql", "common", "mean")]["task_list"] == "halfcheetah-medium;hopper-medium"
    assert float(agg[("td3_bc", "common", "mean")]["value"]) == pytest.approx((52 + 72) / 2)
    assert "| iql | 1,000 | 2 in common | 3 |" in table and "| iql | 1,000 | 3 | 3 |" in table
    assert "1,000 steps: halfcheetah-medium, hopper-medium)" in table

    # An iql variant with another beta on hopper-medium only: its own entry, the shared set unchanged.
    variant = {**scores, ("iql", "hopper-medium-replay"): [30, 31, 32]}
    table, agg = report(variant, {("iql", task): {"beta": 3.0} for task in
                                  ("halfcheetah-medium", "hopper-medium", "walker2d-medium")}
                        | {("iql", "hopper-medium-replay"): {"beta": 10.0}})
    assert ("iql (beta=10.0)", "all", "mean") in agg and ("iql (beta=10.0)", "common", "mean") not in agg
    assert agg[("td3_bc", "common", "mean")]["task_list"] == "halfcheetah-medium;hopper-medium"

    # The same tasks for both: the "all" aggregates compare as they are.
    table, agg = report({k: v for k, v in scores.items() if k[1] != "walker2d-medium"})
    assert {t for _, t, _ in agg} == {"all"} and "in common" not in table


def test_aggregate_figure_compares_one_task_set_and_draws_the_rest_apart(tmp_path, monkeypatch):
    """aggregate.png holds the plain algorithms on the widest shared task set only; a hyperparameter ablation on
    one task, a plain algorithm on fewer tasks and another length on fewer tasks go to aggregate-other.png, one
    panel row per task set, each row titled with its tasks."""
    results = tmp_path / "results"
    tasks = ("halfcheetah-medium", "hopper-medium", "walker2d-medium")
    rows = [(algo, task, "local", seed, 1000, 40 + seed + 10 * i, f"{algo}-{task}")
            for algo in ("iql", "td3_bc") for i, task in enumerate(tasks) for seed in range(2)]
    rows += [("td3_bc", "hopper-medium", "local", s, 1000, 60 + s, "alpha10") for s in range(2)]
    rows += [("cql", "hopper-medium", "local", s, 1000, 30 + s, "cql") for s in range(2)]
    rows += [("iql", "halfcheetah-medium", "local", 0, 500, 35, "iql-short")]
    write_scores(results / "scores.csv", rows)
    (results / "curves" / "alpha10" / "config.json").write_text(json.dumps({"alpha": 10.0}))
    drawn, plot = {}, offline_report.plot_aggregate

    def recording_plot(groups, agg, path):
        drawn[path.name] = [(title, [offline_report.entry_label(e) for e in entries]) for title, entries in groups]
        plot(groups, agg, path)

    monkeypatch.setattr(offline_report, "plot_aggregate", recording_plot)
    assert offline.main(["report", "--results", str(results), "--reps", "100"]) == 0
    title = "locally built stand-ins, not official D4RL"
    assert drawn["aggregate.png"] == [(f"{title}: 3 tasks", ["iql (1k)", "td3_bc (1k)"])]
    assert drawn["aggregate-other.png"] == [
        (f"{title}: halfcheetah-medium", ["iql (500)"]),
        (f"{title}: hopper-medium", ["cql (1k)", "td3_bc (alpha=10.0) (1k)"]),
    ]
    for name in drawn:
        assert_figure(results / "offline" / name)
    # Every entry stays in aggregate.csv; the table says which figure holds what.
    agg = {(r["algorithm"], r["steps"]) for r in read_rows(results / "offline" / "aggregate.csv")}
    assert agg == {("iql", "1000"), ("td3_bc", "1000"), ("cql", "1000"), ("td3_bc (alpha=10.0)", "1000"),
                   ("iql", "500")}
    assert "`aggregate-other.png` draws the other entries" in (results / "offline" / "table.md").read_text()

    # Without anything apart, an earlier report's aggregate-other.png is removed.
    write_scores(results / "scores.csv", [r for r in rows if r[-1] in {f"{a}-{t}" for a in ("iql", "td3_bc")
                                                                       for t in tasks}])
    drawn.clear()
    assert offline.main(["report", "--results", str(results), "--reps", "100"]) == 0
    assert list(drawn) == ["aggregate.png"] and not (results / "offline" / "aggregate-other.png").exists()


def test_report_counts_a_rebuild_of_the_listed_recipe_on_another_machine(tmp_path):
    """Builds are bit-identical per CPU type only: a run on data rebuilt elsewhere by the listed recipe (same
    policy file, seed, steps, reference scores, about the same data score) counts, with its own data score
    stated; data from another policy or seed, a build with other settings, a medium-replay re-run that did not
    reproduce the medium actor, or data too far from the listed build stay out."""
    results = tmp_path / "results"
    recipe = {"env_id": "Hopper-v5", "kind": "medium", "policy_sha256": "aaa", "seed": 0, "num_envs": 20,
              "steps": 1000, "full_recipe": True}
    expert = {**recipe, "kind": "expert", "policy_sha256": "bbb"}

    def parts(medium_return, medium_recipe):
        return [{"transitions": 1000, "return_mean": medium_return, "recipe": medium_recipe, "built_on": "cpu B"},
                {"transitions": 1000, "return_mean": 80.0, "recipe": expert, "built_on": "cpu B"}]

    builds = {"same": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 40.0,
                       "parts": [{"transitions": 1000, "return_mean": 40.0}]},
              "rebuilt": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 41.0,
                          "parts": [{"transitions": 1000, "return_mean": 41.0, "recipe": recipe,
                                     "built_on": "cpu B"}]},
              "other-policy": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 41.0,
                               "parts": [{"transitions": 1000, "return_mean": 41.0,
                                          "recipe": {**recipe, "policy_sha256": "ccc"}, "built_on": "cpu B"}]},
              "not-recipe": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 41.0,
                             "parts": [{"transitions": 1000, "return_mean": 41.0,
                                        "recipe": {**recipe, "full_recipe": False}, "built_on": "cpu B"}]},
              "other-run": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 41.0,
                            "parts": [{"transitions": 1000, "return_mean": 41.0, "built_on": "cpu B",
                                       "recipe": {**recipe, "reproduces_medium_policy": False}}]},
              "far": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 43.0,
                      "parts": [{"transitions": 1000, "return_mean": 43.0, "recipe": recipe, "built_on": "cpu B"}]},
              "me-rebuilt": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 60.0,
                             "parts": parts(42.0, recipe)},
              "me-other": {"ref_min_score": 0.0, "ref_max_score": 100.0, "return_mean": 60.0,
                           "parts": parts(42.0, {**recipe, "seed": 1})}}
    rows = [("iql", "hopper-medium", "local", 0, 1000, 50, "same"),
            ("iql", "hopper-medium", "local", 1, 1000, 52, "rebuilt"),
            ("iql", "hopper-medium", "local", 2, 1000, 11, "other-policy"),
            ("iql", "hopper-medium", "local", 3, 1000, 12, "not-recipe"),
            ("iql", "hopper-medium", "local", 4, 1000, 14, "other-run"),
            ("iql", "hopper-medium", "local", 5, 1000, 15, "far"),
            ("iql", "hopper-medium-expert", "local", 0, 1000, 70, "me-rebuilt"),
            ("iql", "hopper-medium-expert", "local", 1, 1000, 13, "me-other")]
    write_scores(results / "scores.csv", rows, builds)
    (results / "datasets.csv").write_text(
        "dataset,env_id,kind,source,policy,policy_sha256,seed,episodes,steps,return_mean,return_std,ref_min_score,"
        "ref_max_score,normalized_mean\n"
        "hopper-expert,Hopper-v5,expert,local,p,bbb,0,10,1000,81.0,0,0,100,81.0\n"
        "hopper-medium,Hopper-v5,medium,local,p,aaa,0,10,1000,40.0,0,0,100,40.0\n"
    )
    assert offline.main(["report", "--results", str(results), "--reps", "100"]) == 0
    table = (results / "offline" / "table.md").read_text()
    counted, left_out = table.split("## Left out")
    assert "| hopper-medium | iql | 1,000 | 51.0 ± 1.0 | 2 (0, 1†) | 40.0 |" in counted
    assert "| hopper-medium-expert | iql | 1,000 | 70.0 ± 0.0 | 1 (0†) | 60.5 |" in counted
    # each rebuilt run's own data: hopper-medium 41 -> 41.0; medium-expert (42 + 80) / 2 -> 61.0
    assert "- hopper-medium, iql (`rebuilt`): data return hopper-medium 41.0 (listed 40.0), behaviour data " \
        "41.0; built on cpu B" in counted
    assert "hopper-medium 42.0 (listed 40.0), hopper-expert 80.0 (listed 81.0), behaviour data 61.0" in counted
    for score in ("11.0", "12.0", "13.0", "14.0", "15.0"):
        assert score not in counted and f"| {score} ± 0.0 |" in left_out

# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_algorithm_lists_the_algorithm_files(pendulum_store, jax_cache_dir, tmp_path):
    proc = subprocess.run(
        [
            *OFFLINE,
            "run",
            "--algos",
            "iqll",
            "--datasets",
            PENDULUM_ID,
            "--runs-root",
            str(tmp_path / "runs"),
            "--results",
            str(tmp_path / "results"),
        ],
        env=cli_env(jax_cache_dir, pendulum_store),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_clean_failure(proc, "unknown algorithm 'iqll'", "iql.py")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_bad_dataset_and_flags_fail_before_anything_starts(pendulum_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    monkeypatch.setenv("MINARI_REMOTE", "offline://")  # a remote rlzoo does not know is never tried
    base = ["run", "--algos", "iql", "--runs-root", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]

    assert offline.main(base + ["--datasets", PENDULUM_ID, "halfcheetah-mediun"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown dataset 'halfcheetah-mediun'" in err and "Close matches: halfcheetah-medium" in err

    assert offline.main(base + ["--datasets", "hopper-medium"]) == 2  # known, but not built in this store
    err = " ".join(capsys.readouterr().err.split())
    assert "dataset 'hopper-medium' is not available" in err and "python -m envs.build_dataset hopper-medium" in err

    assert offline.main(base + ["--datasets", "hopper-medium", "--", "--total-steps", "5"]) == 2
    assert "--total-steps is set by the harness" in " ".join(capsys.readouterr().err.split())

    assert offline.main(base + ["--datasets", "hopper-medium", "--", "--expectle", "0.9"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "algorithms/iql.py has no flag --expectle" in err and "--expectile" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_corl_curve_compare_draws_both_runs_and_copies_their_files(tmp_path, plotted_labels):
    """benchmarks/corl_curve.py compare: an rlzoo CQL run dir and a CORL CSV (the columns its train() logs)
    go into one folder with a figure; load_corl imports a CORL-like file without d4rl, gym, pyrallis, wandb."""
    from benchmarks import corl_curve

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"env": "halfcheetah-medium-replay"}))
    with open(run / "train.csv", "w") as f:
        f.write("step,seed,cql_gap,q_mean\n1000,0,4.2,-1.7\n2000,0,4.1,-5.9\n")
    with open(run / "eval.csv", "w") as f:
        f.write("step,seed,return_mean,return_std,score\n2000,0,-19.5,0.7,3.1\n")
    corl = tmp_path / "corl.csv"
    corl.write_text("step,average_qf1,cql_qf1_diff,wall_s,return_mean,score\n1000,-1.8,4.16,1.0,,\n"
                    "2000,-7.4,4.19,2.0,-4.8,3.2\n")
    corl.with_suffix(".json").write_text(json.dumps({"seed": 0, "torch": "2.13.0+cpu"}))  # train's provenance
    out = tmp_path / "out"
    corl_curve.main(["compare", "--rlzoo-run", str(run), "--corl-csv", str(corl), "--out", str(out)])
    assert_figure(out / "compare.png")
    drawn = dict(plotted_labels)  # label -> points of its last line
    assert drawn.get("rlzoo (JAX)", 0) > 0 and drawn.get("CORL (PyTorch)", 0) > 0, plotted_labels
    assert (out / "corl.csv").read_text() == corl.read_text()
    assert (out / "rlzoo-train.csv").read_text() == (run / "train.csv").read_text()
    assert json.loads((out / "corl.json").read_text())["torch"] == "2.13.0+cpu"

    fake = tmp_path / "corl_cql.py"
    fake.write_text("import d4rl, gym, pyrallis, wandb\n\n@pyrallis.wrap()\ndef train(config):\n    return 1\n"
                    "def act(env: gym.Env):\n    return 2\n")
    module = corl_curve.load_corl(str(fake))
    assert module.train(None) == 1 and module.act(None) == 2
    assert "pyrallis" not in sys.modules and "d4rl" not in sys.modules  # the stand-ins are gone again
