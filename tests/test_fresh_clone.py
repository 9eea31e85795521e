"""The README's main job in a fresh clone: it builds the dataset with a progress bar, trains, and leaves every
tracked file as it was (a user's command writes only to its run directory and the dataset store)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

REPO = Path(__file__).resolve().parents[1]


def test_the_main_job_leaves_a_fresh_clone_clean(jax_cache_dir, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # The clone's own code, not the installed checkout's; an empty Minari store, as on a new machine.
    env = cli_env(jax_cache_dir, tmp_path / "minari", PYTHONPATH=str(clone))
    build = subprocess.run([sys.executable, "-m", "envs.build_dataset", "halfcheetah-medium"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    assert re.search(r"(1\.00M|1000000)/(1\.00M|1000000)", build.stderr), build.stderr[-2000:]  # the bar, done
    # The main job's IQL command, shortened from 50k steps.
    train = subprocess.run([sys.executable, "algorithms/iql.py", "--env", "halfcheetah-medium", "--total-steps", "1000",
                            "--chunk", "500", "--eval-every", "1000", "--checkpoint-every", "1000",
                            "--eval-episodes", "1", "--quiet"], cwd=clone, env=env, capture_output=True, text=True,
                           timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    (summary,) = (clone / "runs").glob("iql-halfcheetah-medium-*/summary.json")
    assert json.loads(summary.read_text())["data_source"] == "local"
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
