"""envs/ (python -m envs.build_dataset): locally built D4RL-style Minari datasets (small builds into a temporary
store)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_failure, cli_env

import envs.build_dataset as bd
import envs.pick_policies as pick
from envs import builder, listing, recipes, references, replay_logs, sac_replay
from envs.behaviours import policy_behaviour, random_behaviour
from envs.collect import collect
from envs.recipes import RANDOM, RECIPE_ENVS, RECIPES, Recipe
from envs.shared import sha256
from envs.store import STAGING
from rlzoo import datasets
from rlzoo.errors import RlzooError
from rlzoo.provenance import cpu_signature

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh Minari store, policy folder and reference-score cache; nothing outside tmp_path is touched."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setattr(recipes, "POLICY_DIR", tmp_path / "policies")
    monkeypatch.setattr(replay_logs, "ACTION_LOG_DIR", tmp_path / "replays")
    (tmp_path / "policies").mkdir()
    return tmp_path


def _build(store, alias="hopper-random", **kw):
    kw = {"steps": 3000, "num_envs": 4, "refs_path": store / "refs.json", "results_csv": None, "quiet": True, **kw}
    return builder.build(alias, **kw)


def _save_actor(path, obs_dim, act_dim, seed=0, mean_scale=1.0):
    """Random SAC-actor parameters saved like algorithms/sac.py does during training (a leading seed axis of
    1, empty meta); `mean_scale` > 1 makes the mean action large (a Hopper that falls at once, so a
    100-episode evaluation is fast). Drawn with numpy: flax's eager init would compile every op."""
    import jax
    import jax.numpy as jnp

    from rlzoo.checkpoint import save_params
    from rlzoo.networks import TanhGaussianActor

    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(TanhGaussianActor(act_dim, (256, 256)).init, jax.random.key(0), jnp.zeros((1, obs_dim)))

    def draw(path, leaf):
        if path[-1].key == "bias":
            return np.zeros((1, *leaf.shape), np.float32)
        scale = mean_scale if path[-2].key == "Dense_0" and len(path) == 3 else 1.0
        return (rng.normal(size=(1, *leaf.shape)) * scale / np.sqrt(leaf.shape[0])).astype(np.float32)

    save_params(path, jax.tree_util.tree_map_with_path(draw, shapes))


def test_hopper_random_arrays_boundaries_and_metadata(store):
    record = _build(store)
    ds = datasets.load("hopper-random", download=False)
    n = 3000
    assert ds.source == "local" and ds.env_id == "Hopper-v5" and len(ds) == n
    assert ds.observations.shape == ds.next_observations.shape == (n, 11)
    assert ds.actions.shape == (n, 3) and ds.rewards.shape == ds.terminals.shape == ds.timeouts.shape == (n,)
    for a in (ds.observations, ds.actions, ds.rewards, ds.next_observations, ds.terminals, ds.timeouts):
        assert a.dtype == np.float32
    assert np.all(np.abs(ds.actions) <= 1.0)
    # Random Hopper episodes end by falling: true terminations inside the data, never bootstrapped.
    ends = np.flatnonzero((ds.terminals + ds.timeouts) > 0)
    assert ds.terminals.sum() > 10 and ends[0] < n // 2
    # The step budget cuts each env's last episode: a truncation, not a termination, and not a time limit.
    raw = list(__import__("minari").load_dataset(datasets.local_id("hopper", "random")).iterate_episodes())
    assert sum(len(ep.rewards) for ep in raw) == n == record["steps"]
    for ep in raw:  # exactly one end flag per episode, on its last step
        flags = np.asarray(ep.terminations) | np.asarray(ep.truncations)
        assert flags[-1] and not flags[:-1].any()
        assert np.asarray(ep.observations).dtype == np.float32
    cut = [ep for ep in raw if ep.truncations[-1] and not ep.terminations[-1]]
    assert 1 <= len(cut) <= 4 and all(len(ep.rewards) < 1000 for ep in cut)
    assert record["episodes_cut_by_budget"] == len(cut) and record["episodes"] == len(raw)
    # The loader knows those fragments are no episodes: the data's return and IQL's reward scale leave them out
    # (CORL's rule), and its return is the builder's, so a run's dataset.json identifies the build.
    assert (~ds.episode_complete).sum() == len(cut)
    complete = np.array([ep.rewards.sum() for ep in raw if not (ep.truncations[-1] and len(ep.rewards) < 1000)])
    assert ds.summary["return_mean"] == pytest.approx(record["return_mean"], rel=1e-9)
    assert ds.reward_scale() == pytest.approx(1000.0 / (complete.max() - complete.min()))
    all_returns = np.array([ep.rewards.sum() for ep in raw])
    assert ds.reward_scale() != pytest.approx(1000.0 / (all_returns.max() - all_returns.min()))
    # Within an episode, s'_i is s_{i+1}.
    inside = np.flatnonzero((ds.terminals + ds.timeouts)[:-1] == 0)
    np.testing.assert_array_equal(ds.next_observations[inside], ds.observations[inside + 1])

    # Reference scores and metadata: random reference from the cache, D4RL expert score (no expert file).
    refs = json.loads((store / "refs.json").read_text())["hopper"]
    assert ds.ref_min_score == pytest.approx(refs["ref_min_score"]) and ds.ref_max_score == 3234.3
    assert "D4RL" in refs["ref_max_source"] and refs["ref_min_episodes"] == 100
    meta = ds.metadata["parts"][0]
    assert "LOCALLY BUILT" in meta["description"] and meta["rlzoo_build"]["seed"] == 0
    build_json = datasets.datasets_root() / datasets.local_id("hopper", "random") / "rlzoo_build.json"
    saved = json.loads(build_json.read_text())
    for key in (
        "env_id",
        "gymnasium",
        "policy",
        "policy_sha256",
        "seed",
        "episodes",
        "steps",
        "return_mean",
        "return_std",
        "ref_min_score",
        "ref_max_score",
        "ref_min_source",
        "ref_max_source",
        "build_command",
        "date",
        "rlzoo",
    ):
        assert key in saved, key
    assert saved["build_command"] == "python -m envs.build_dataset hopper-random --steps 3000 --num-envs 4"
    # The random policy scores ~0 on its own reference.
    assert abs(float(ds.normalized_score(ds.episode_returns.mean()))) < 10
    assert abs(record["normalized_mean"]) < 10
    # Named by its Minari id or its path, the build is still labelled locally built.
    lid = datasets.local_id("hopper", "random")
    assert datasets.resolve(lid, download=False).source == "local"
    assert datasets.resolve(str(datasets.datasets_root() / lid), download=False).source == "local"
    by_data_dir = datasets.resolve(str(datasets.datasets_root() / lid / "data"), download=False)
    assert by_data_dir.dataset_ids == [str(datasets.datasets_root() / lid)] and by_data_dir.source == "local"
    # A directory that is not a dataset is named as such (not called corrupt, nothing to delete).
    with pytest.raises(RlzooError, match="is a directory but not a Minari dataset") as err:
        datasets.resolve(str(store), download=False)
    assert "Delete" not in str(err.value)
    # Nothing is left in the staging folder; an existing dataset is skipped without --force.
    assert not (datasets.datasets_root() / STAGING).exists()
    assert _build(store) is None


def test_same_seed_same_data_other_seed_other_data(store, monkeypatch):
    _build(store, steps=1500, seed=3)
    first = datasets.load("hopper-random", download=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store / "store2"))
    _build(store, steps=1500, seed=3)
    second = datasets.load("hopper-random", download=False)
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    _build(store, steps=1500, seed=4, force=True)
    third = datasets.load("hopper-random", download=False)
    assert not np.array_equal(first.actions, third.actions)


def test_crash_mid_build_leaves_nothing_and_corrupt_files_are_reported(store, monkeypatch, jax_cache_dir):
    import minari

    real = minari.create_dataset_from_buffers

    def crash(*args, **kwargs):
        real(*args, **kwargs)  # the files are written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(minari, "create_dataset_from_buffers", crash)
    with pytest.raises(KeyboardInterrupt):
        _build(store, steps=500)
    assert not datasets.on_disk(datasets.local_id("hopper", "random"))
    assert not (datasets.datasets_root() / STAGING).exists()
    with pytest.raises(RlzooError, match="python -m envs.build_dataset hopper-random"):
        datasets.load("hopper-random", download=False)

    monkeypatch.setattr(minari, "create_dataset_from_buffers", real)
    _build(store, steps=500)
    path = datasets.datasets_root() / datasets.local_id("hopper", "random")
    h5 = path / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(RlzooError) as err:
        datasets.load("hopper-random", download=False)
    assert str(path) in str(err.value) and "python -m envs.build_dataset hopper-random --force" in str(err.value)
    # The same from the command line: one clean paragraph, no traceback from h5py.
    proc = subprocess.run([sys.executable, str(ROOT / "algorithms" / "iql.py"), "--env", "hopper-random"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=cli_env(jax_cache_dir, datasets.datasets_root()))
    assert_clean_failure(proc, str(path), "python -m envs.build_dataset hopper-random --force")


def test_missing_dataset_and_unknown_or_unbuildable_names(store, monkeypatch):
    with pytest.raises(RlzooError, match="python -m envs.build_dataset walker2d-random"):
        datasets.load("walker2d-random", download=False)
    with pytest.raises(RlzooError, match="Close matches: .*hopper-random"):
        builder.build("hopper-randm")
    with pytest.raises(RlzooError, match="medium-replay.*envs.pick_policies --task halfcheetah"):
        _build(store, "halfcheetah-medium-replay")
    with pytest.raises(RlzooError, match="ant-expert.npz does not exist.*envs.pick_policies --task ant"):
        builder.build("ant-expert")
    missing = store / "policies" / "halfcheetah-medium.npz"
    monkeypatch.setitem(RECIPES, "halfcheetah-medium", Recipe("HalfCheetah-v5", str(missing)))
    with pytest.raises(RlzooError) as err:
        _build(store, "halfcheetah-medium")
    assert str(missing) in str(err.value) and "algorithms/sac.py" in str(err.value)
    assert "halfcheetah-medium" not in recipes.expand(["all"]) and "hopper-random" in recipes.expand(["all"])
    # medium-expert is built as its two parts, so a missing part is reported.
    with pytest.raises(RlzooError, match="halfcheetah-medium"):
        _build(store, "halfcheetah-medium-expert")


def test_policy_behaviour_and_expert_reference(store, monkeypatch):
    # A SAC checkpoint written during training (leading seed axis, empty meta) drives halfcheetah-medium.
    policy = store / "policies" / "step_10000.npz"
    _save_actor(policy, 17, 6)
    monkeypatch.setitem(RECIPES, "halfcheetah-medium", Recipe("HalfCheetah-v5", str(policy)))
    refs = {
        "halfcheetah": {
            "env_id": "HalfCheetah-v5",
            "ref_min_score": -280.0,
            "ref_max_score": 12135.0,
            "ref_max_policy_sha256": None,
        }
    }
    (store / "refs.json").write_text(json.dumps(refs))  # cached: no 100-episode evaluation here
    record = _build(store, "halfcheetah-medium", steps=1200, num_envs=3)
    assert record["policy_sha256"] == sha256(policy) and record["ref_min_score"] == -280.0
    ds = datasets.load("halfcheetah-medium", download=False)
    assert len(ds) == 1200 and ds.timeouts.sum() == 3 and ds.terminals.sum() == 0
    assert ds.actions.std(0).min() > 0.01  # sampled, not the (near-zero) mean of a fresh actor

    # With envs/policies/hopper-expert.npz present, ref_max_score is that policy's mean return.
    _save_actor(recipes.POLICY_DIR / "hopper-expert.npz", 11, 3, seed=1, mean_scale=300.0)
    entry = references.reference_scores("hopper", store / "refs.json", quiet=True)
    assert entry["ref_max_policy_sha256"] == sha256(recipes.POLICY_DIR / "hopper-expert.npz")
    assert "expert policy" in entry["ref_max_source"] and entry["ref_max_episodes"] == 100
    assert json.loads((store / "refs.json").read_text())["hopper"]["ref_max_score"] == entry["ref_max_score"]


def test_only_the_recipes_own_build_is_listed_in_results(store, monkeypatch):
    """Another seed or env count changes the data: such a build must not replace the recipe's row."""
    monkeypatch.setitem(RECIPES, "hopper-random", Recipe("Hopper-v5", RANDOM, steps=400))
    csv_path = store / "datasets.csv"
    for kw in ({"num_envs": 4}, {"seed": 3, "num_envs": RECIPE_ENVS}):
        record = _build(store, steps=None, results_csv=csv_path, record_results=True, force=True, **kw)
        assert record["full_recipe"] is False
        assert not csv_path.exists()
    assert _build(store, steps=None, results_csv=csv_path, record_results=True, force=True,
                  num_envs=RECIPE_ENVS)["full_recipe"]
    assert "hopper-random" in csv_path.read_text()


def test_committed_expert_scores_about_100_and_random_about_0_on_the_committed_references():
    """The committed hopper expert and reference scores agree: on fresh episodes (other env seeds than the
    reference's), the deterministic expert normalizes to ~100 and the uniform random policy to ~0."""
    refs = json.loads((ROOT / "envs" / "reference_scores.json").read_text())["hopper"]
    expert = ROOT / "envs" / "policies" / "hopper-expert.npz"
    assert sha256(expert) == refs["ref_max_policy_sha256"]
    norm = lambda r: datasets.normalize(r.mean(), refs["ref_min_score"], refs["ref_max_score"])
    got = collect("Hopper-v5", policy_behaviour(expert, 11, 3, deterministic=True), seed=7, num_envs=4,
                     episodes=4, record=False)
    assert 90.0 < norm(got.returns) < 110.0 and got.lengths.min() == 1000
    got = collect("Hopper-v5", random_behaviour(3), seed=7, num_envs=10, episodes=100, record=False)
    assert abs(norm(got.returns)) < 3.0


def test_results_csv_upsert(tmp_path):
    path = tmp_path / "datasets.csv"
    listing.upsert_row(path, {"dataset": "hopper-random", "steps": 1, "return_mean": 1.0})
    listing.upsert_row(path, {"dataset": "ant-random", "steps": 2})
    listing.upsert_row(path, {"dataset": "hopper-random", "steps": 3})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == ["ant-random", "hopper-random"] and rows[1]["steps"] == "3"
    assert list(rows[0]) == listing.DATASET_COLUMNS


def test_cli_error_is_one_paragraph(tmp_path):
    env = {"MINARI_DATASETS_PATH": str(tmp_path), "PATH": "", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "envs.build_dataset", "halfcheetah-randon"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    message = assert_clean_failure(out, "unknown dataset 'halfcheetah-randon'")
    assert message.split("Close matches: ")[1].startswith("halfcheetah-random,")


TINY_SAC = {"env": "Hopper-v5", "seed": 3, "chunk": 200, "learning_starts": 200, "update_every": 50,
            "buffer_size": 1000, "batch_size": 32, "hidden_dims": [32, 32], "autotune": True}


@pytest.fixture(scope="module")
def tiny_sac_run(tmp_path_factory):
    """The "training run" of a medium policy: a tiny SAC run on Hopper that saves its replay and actor."""
    run_dir = tmp_path_factory.mktemp("tiny-sac") / "sac-run"
    cmd = sac_replay.sac_command(TINY_SAC, 600, 3, run_dir) + ["--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return run_dir


def _as_medium_policy(store, tmp_path, tiny_sac_run):
    """A private copy of the tiny run, its actor as hopper-medium's policy (policies.json and reference scores
    as envs/pick_policies.py writes them); returns (run folder, policies.json entry)."""
    run_dir = tmp_path / "sac-run"
    shutil.copytree(tiny_sac_run, run_dir)
    (store / "policies" / "hopper-medium.npz").write_bytes((run_dir / "policy.npz").read_bytes())
    entry = {"file": str(store / "policies" / "hopper-medium.npz"), "step": 600, "sac_config": TINY_SAC}
    (store / "policies" / "policies.json").write_text(json.dumps({"hopper-medium": entry}))
    refs = {"hopper": {"env_id": "Hopper-v5", "ref_min_score": -20.0, "ref_max_score": 3000.0,
                       "ref_max_policy_sha256": None}}
    (store / "refs.json").write_text(json.dumps(refs))
    return run_dir, entry


def test_medium_replay_is_the_training_runs_replay_in_order(store, tmp_path, tiny_sac_run):
    run_dir, entry = _as_medium_policy(store, tmp_path, tiny_sac_run)

    record = builder.build("hopper-medium-replay", refs_path=store / "refs.json", results_csv=None, quiet=True)
    # The builder re-ran the training: same actor bit for bit, so this is that run's replay.
    assert record["replay"]["reproduces_medium_policy"] is True and record["steps"] == 600
    assert record["policy"] == f"replay of the SAC run that trained {entry['file']}"
    ds = datasets.load("hopper-medium-replay", download=False)
    with np.load(run_dir / "replay.npz") as f:
        replay = {k: f[k][0] for k in f.files if k != "seeds"}
    np.testing.assert_array_equal(ds.observations, replay["observations"])
    np.testing.assert_array_equal(ds.next_observations, replay["next_observations"])
    # The dataset holds the actions the env received: the policy's [-1, 1] actions scaled to Hopper's
    # bounds (also [-1, 1], up to the rounding of the scaling).
    np.testing.assert_allclose(ds.actions, replay["actions"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds.rewards, replay["rewards"])
    np.testing.assert_array_equal(ds.terminals, replay["dones"])
    # Random early actions make Hopper fall: true terminations, and only the budget cut is a truncation.
    assert ds.terminals.sum() == record["episodes_terminated"] > 3
    assert ds.timeouts.sum() + ds.terminals.sum() == record["episodes"]

    # --replay-from reads the same rows from the training run's folder instead of re-running it: from its
    # replay.npz, and without that file from its newest checkpoint's replay buffer.
    for drop_npz in (False, True):
        if drop_npz:
            (run_dir / "replay.npz").unlink()
        again = builder.build("hopper-medium-replay", force=True, refs_path=store / "refs.json", results_csv=None,
                         quiet=True, replay_from=run_dir)
        assert again["replay"]["read_from"].endswith("checkpoints/600" if drop_npz else "replay.npz")
        assert again["steps"] == 600 and again["episodes"] == record["episodes"]
        assert again["policy"] == record["policy"]  # the run's own replay, its actor checked
        ds2 = datasets.load("hopper-medium-replay", download=False)
        for field in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(ds2, field), getattr(ds, field))
    # A prefix only: asking for more than the run collected, or reading another run, is refused by name.
    with pytest.raises(RlzooError, match="holds 600 transitions, fewer than the 800"):
        builder.build("hopper-medium-replay", force=True, steps=800, refs_path=store / "refs.json", results_csv=None,
                 quiet=True, replay_from=run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "batch_size": 64}))
    with pytest.raises(RlzooError, match="its batch_size is 64, but hopper-medium.s policy was trained with "
                                         "batch_size = 32"):
        builder.build("hopper-medium-replay", force=True, refs_path=store / "refs.json", results_csv=None,
                 quiet=True, replay_from=run_dir)

    # A re-run whose actor is not the committed one (here: the file was changed) is that of another training
    # run, and says so in its record and its name.
    with np.load(store / "policies" / "hopper-medium.npz") as f:
        arrays = {k: f[k] + 1.0 if f[k].dtype.kind == "f" else f[k] for k in f.files}
    np.savez(store / "policies" / "hopper-medium.npz", **arrays)
    other = builder.build("hopper-medium-replay", force=True, refs_path=store / "refs.json", results_csv=None,
                          quiet=True)
    assert other["replay"]["reproduces_medium_policy"] is False and other["replay"]["medium_policy_max_abs_diff"] > 0
    assert other["policy"].startswith(f"replay of a re-run of the SAC training of {entry['file']} (same command")


def test_medium_replay_rebuilds_from_its_action_log_bit_for_bit(store, tmp_path, tiny_sac_run, monkeypatch):
    """--save-actions logs the listed medium-replay build; a later build replays the log instead of re-running the
    SAC training and gives the same data bit for bit. A log that no longer fits is refused by name."""
    run_dir, _ = _as_medium_policy(store, tmp_path, tiny_sac_run)
    csv_path, alias = store / "datasets.csv", "hopper-medium-replay"
    kw = {"refs_path": store / "refs.json", "results_csv": csv_path, "record_results": True, "quiet": True}
    with pytest.raises(RlzooError, match="not built.*envs.build_dataset hopper-medium-replay"):
        replay_logs.save_action_log(alias, results_csv=csv_path, quiet=True)
    listed = builder.build(alias, replay_from=run_dir, **kw)
    original = datasets.load(alias, download=False)
    with pytest.raises(RlzooError, match="for <task>-medium-replay datasets, not 'hopper-random'"):
        bd.main(bd.Config(datasets=["hopper-random"], save_actions=True))
    log_path = replay_logs.save_action_log(alias, results_csv=csv_path, quiet=True)
    assert log_path == store / "replays" / f"{alias}.npz"

    monkeypatch.setattr(builder, "collect_replay", lambda *a, **k: pytest.fail("a logged replay must not re-run SAC"))
    again = builder.build(alias, force=True, **kw)
    assert again["replay"]["identical_to_log_source"] is True and again["replay"]["actions_log"].endswith(
        "hopper-medium-replay.npz")
    assert (again["episodes"], again["return_mean"], again["policy"]) == (
        listed["episodes"], listed["return_mean"], listed["policy"])
    rebuilt = datasets.load(alias, download=False)
    for name in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(original, name))
    with open(store / "builds.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert (last["identical_to_listed"], last["identical_to_log"]) == ("True", "True")

    with np.load(log_path) as f:
        arrays = {k: f[k] for k in f.files}
    # The first action changed by 1e-4: the episodes still end where they did, but the data differ, and the listed
    # row (the log's source) stays.
    changed = {**arrays, "actions": arrays["actions"].copy()}
    changed["actions"][0] += 1e-4
    np.savez(log_path, **changed)
    other = builder.build(alias, force=True, **kw)
    assert other["replay"]["identical_to_log_source"] is False and other["return_mean"] != listed["return_mean"]
    with open(csv_path, newline="") as f:
        assert float(next(csv.DictReader(f))["return_mean"]) == listed["return_mean"]
    # The first episode one step longer: the env terminates it where the recording goes on.
    lengths = arrays["episode_lengths"].copy()
    lengths[0] += 1
    lengths[1] -= 1
    np.savez(log_path, **{**arrays, "episode_lengths": lengths})
    with pytest.raises(RlzooError, match=f"diverged from the recorded run at episode 0, step {lengths[0] - 2}: the "
                                         "env ended it by a termination, the recording did not end it.*--retrain"):
        builder.build(alias, force=True, **kw)
    log_path.write_bytes(b"not an npz")
    with pytest.raises(RlzooError, match="not a readable action log.*git checkout"):
        builder.build(alias, force=True, **kw)
    np.savez(log_path, **arrays)
    medium = store / "policies" / "hopper-medium.npz"
    medium.write_bytes(medium.read_bytes() + b"\0")
    with pytest.raises(RlzooError, match="medium policy with sha256 .* the log is of another run.*--retrain"):
        builder.build(alias, force=True, **kw)
    # Only the build the CSV lists can be logged.
    listing.upsert_row(csv_path, {**listed, "return_mean": listed["return_mean"] + 1.0})
    with pytest.raises(RlzooError, match="not the one .*datasets.csv lists.*--relist"):
        replay_logs.save_action_log(alias, results_csv=csv_path, quiet=True)


def test_committed_action_logs_are_of_the_listed_builds():
    """Each envs/replays/<name>.npz holds as many episodes and actions as the datasets.csv row of <name>, and was
    saved from a build with that row's mean return and medium policy (a relist without a new log fails here)."""
    datasets_csv = ROOT / "results" / "datasets.csv"
    logs = {p.stem: p for p in (ROOT / "envs" / "replays").glob("*.npz")}
    assert set(logs) == {f"{t}-medium-replay" for t in ("halfcheetah", "hopper", "walker2d", "ant")}
    for alias, path in logs.items():
        log, row = replay_logs.read_action_log(path), listing.listed_row(datasets_csv, alias)
        assert (len(log["episode_lengths"]), len(log["actions"])) == (int(row["episodes"]), int(row["steps"]))
        assert log["source"]["return_mean"] == pytest.approx(float(row["return_mean"]), rel=1e-12)
        assert log["source"]["policy_sha256"] == row["policy_sha256"]


def test_committed_halfcheetah_medium_replay_log_rebuilds_the_listed_build(tmp_path, monkeypatch):
    """The committed log of halfcheetah-medium-replay (40k steps) rebuilds the listed build bit for bit on this
    machine, without the SAC training: the claim that a logged medium-replay does not depend on the CPU."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setattr(builder, "collect_replay", lambda *a, **k: pytest.fail("a logged replay must not re-run SAC"))
    record = builder.build("halfcheetah-medium-replay", results_csv=None, quiet=True)
    row = listing.listed_row(ROOT / "results" / "datasets.csv", "halfcheetah-medium-replay")
    assert record["replay"]["identical_to_log_source"] is True, record["replay"]["log_source"]
    assert (record["episodes"], record["return_mean"]) == (int(row["episodes"]), float(row["return_mean"]))


def test_split_replay_separates_terminations_time_limits_and_the_budget_cut():
    rng = np.random.default_rng(0)
    n = 450  # Pendulum: 200-step time limit, never terminates; episodes 200 + 200 + 50 (cut)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    next_obs = np.roll(obs, -1, axis=0)
    next_obs[[199, 399, 449]] = rng.normal(size=(3, 3))  # the env was reset after these rows
    replay = {"observations": obs, "actions": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
              "rewards": rng.normal(size=n).astype(np.float32), "next_observations": next_obs,
              "dones": np.zeros(n, np.float32)}
    got = sac_replay.split_replay(replay, "Pendulum-v1", 0)
    assert got.lengths.tolist() == [200, 200, 50] and got.cut.tolist() == [False, False, True]
    assert not got.terminated.any() and all(ep.truncations[-1] and ep.truncations.sum() == 1 for ep in got.episodes)
    np.testing.assert_array_equal(got.episodes[1].observations[-1], next_obs[399])
    np.testing.assert_allclose(got.episodes[0].actions, 2.0 * replay["actions"][:200], atol=1e-6)  # bounds ±2
    replay["dones"][[99]] = 1.0  # a termination splits an episode and is not a truncation
    got = sac_replay.split_replay(replay, "Pendulum-v1", 0)
    assert got.lengths.tolist() == [100, 100, 200, 50] and got.terminated.tolist() == [True, False, False, False]


def test_medium_expert_is_its_local_parts_and_never_mixes_official_with_local(store):
    import shutil

    _save_actor(recipes.POLICY_DIR / "hopper-medium.npz", 11, 3, seed=2)
    _save_actor(recipes.POLICY_DIR / "hopper-expert.npz", 11, 3, seed=1, mean_scale=300.0)
    refs = {"hopper": {"env_id": "Hopper-v5", "ref_min_score": -20.0, "ref_max_score": 3000.0,
                       "ref_max_policy_sha256": sha256(recipes.POLICY_DIR / "hopper-expert.npz")}}
    (store / "refs.json").write_text(json.dumps(refs))  # cached: no 100-episode evaluations here
    _build(store, "hopper-medium-expert", steps=300, num_envs=2)  # builds its two parts
    ds = datasets.load("hopper-medium-expert", download=False)
    assert ds.source == "local" and len(ds) == 600
    assert ds.dataset_ids == ["rlzoo-local/hopper/medium-v0", "rlzoo-local/hopper/expert-v0"]
    medium = datasets.load("hopper-medium", download=False)
    np.testing.assert_array_equal(ds.observations[:300], medium.observations)
    # An official medium on disk is preferred for hopper-medium, but with no official expert the
    # composite stays all-local rather than joining an official part to a local one.
    root = datasets.datasets_root()
    shutil.copytree(root / "rlzoo-local/hopper/medium-v0", root / "mujoco/hopper/medium-v0")
    assert datasets.load("hopper-medium", download=False).source == "official"
    mixed = datasets.load("hopper-medium-expert", download=False)
    assert mixed.source == "local" and all(i.startswith("rlzoo-local/") for i in mixed.dataset_ids)


def test_pick_policies_takes_final_actor_as_expert_and_nearest_third_as_medium(store, tmp_path):
    run = tmp_path / "sac-Hopper-v5-s0"
    (run / "policies").mkdir(parents=True)
    config = {**TINY_SAC, "total_steps": 40000, "save_policy_every": 10000, "run_dir": str(run), "quiet": True}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RlzooError, match="has not finished"):
        pick.main(pick.Config("hopper", run))
    for i, step in enumerate((10000, 20000, 30000, 40000)):
        _save_actor(run / "policies" / f"step_{step}.npz", 11, 3, seed=10 + i)
    (run / "policy.npz").write_bytes((run / "policies" / "step_40000.npz").read_bytes())
    (run / "summary.json").write_text(json.dumps({"steps": 40000}))
    # Logged (mean-action) returns: step 10000 is outside the window around the final 100 and is skipped.
    (run / "eval.csv").write_text("step,seed,score\n10000,3,1.0\n20000,3,30.0\n30000,3,40.0\n40000,3,100.0\n")
    records = pick.main(pick.Config("hopper", run, episodes=2, expert_episodes=2))

    medium, expert = records["hopper-medium"], records["hopper-expert"]
    assert [c["step"] for c in medium["candidates"]] == [20000, 30000]
    target = expert["return_sampled_mean"] / 3
    best = min(medium["candidates"], key=lambda c: abs(c["return_sampled_mean"] - target))
    assert medium["step"] == best["step"] and expert["step"] == 40000
    assert sha256(recipes.POLICY_DIR / "hopper-medium.npz") == sha256(run / "policies" / f"step_{best['step']}.npz")
    assert sha256(recipes.POLICY_DIR / "hopper-expert.npz") == sha256(run / "policy.npz")
    assert medium["sac_config"]["hidden_dims"] == [32, 32] and "run_dir" not in medium["sac_config"]
    assert json.loads((recipes.POLICY_DIR / "policies.json").read_text()) == records
    assert recipes.unavailable("hopper-medium-replay") is None and recipes.unavailable("hopper-expert") is None
    # A different existing policy file is not silently replaced.
    _save_actor(run / "policy.npz", 11, 3, seed=99)
    with pytest.raises(RlzooError, match="pass --force"):
        pick.main(pick.Config("hopper", run, episodes=2, expert_episodes=2))
    # Nothing was copied by the refused call; --medium-step keeps a chosen snapshot (outside the window too).
    assert sha256(recipes.POLICY_DIR / "hopper-expert.npz") != sha256(run / "policy.npz")
    records = pick.main(pick.Config("hopper", run, episodes=2, expert_episodes=2, force=True, medium_step=10000))
    assert records["hopper-medium"]["step"] == 10000
    assert sha256(recipes.POLICY_DIR / "hopper-medium.npz") == sha256(run / "policies" / "step_10000.npz")


def test_refs_only_updates_reference_scores_without_collecting(store, monkeypatch):
    refs = {"hopper": {"env_id": "Hopper-v5", "ref_min_score": -20.0, "ref_max_score": 3000.0,
                       "ref_max_policy_sha256": None}}
    (store / "refs.json").write_text(json.dumps(refs))
    record = _build(store, "hopper-random", steps=500, num_envs=2)
    before = datasets.load("hopper-random", download=False)
    refs["hopper"]["ref_max_score"] = 2000.0  # as if an expert policy had been evaluated since
    (store / "refs.json").write_text(json.dumps(refs))
    for module in (builder, references):  # the two that collect
        monkeypatch.setattr(module, "collect", lambda *a, **k: pytest.fail("--refs-only must not collect"))
    new = references.refresh_refs("hopper-random", refs_path=store / "refs.json", results_csv=None, quiet=True)
    after = datasets.load("hopper-random", download=False)
    assert (after.ref_min_score, after.ref_max_score) == (-20.0, 2000.0)
    np.testing.assert_array_equal(after.observations, before.observations)
    assert new["normalized_mean"] == pytest.approx(100 * (record["return_mean"] + 20) / 2020)
    with pytest.raises(RlzooError, match="not built"):
        references.refresh_refs("walker2d-random", refs_path=store / "refs.json", results_csv=None, quiet=True)


def test_replay_from_goes_with_exactly_one_medium_replay_dataset(store, tmp_path):
    pairs = (["hopper-medium-replay", "walker2d-medium-replay"], ["hopper-medium-replay", "hopper-random"])
    for names in (["all"], *pairs):
        with pytest.raises(RlzooError, match="exactly one <task>-medium-replay"):
            bd.main(bd.Config(datasets=names, replay_from=tmp_path / "sac-run"))


def test_pick_policies_judges_snapshots_by_their_own_seeds_returns(tmp_path):
    (tmp_path / "eval.csv").write_text("step,seed,return_mean,return_std,score\n"
                                       "10000,3,100,0,100\n10000,4,900,0,900\n20000,3,200,0,200\n20000,4,50,0,50\n")
    assert pick.logged_returns(tmp_path, 3) == {10000: 100.0, 20000: 200.0}
    assert pick.logged_returns(tmp_path, 4) == {10000: 900.0, 20000: 50.0}


def test_a_rebuild_with_other_data_keeps_the_listed_build_and_is_logged(store, monkeypatch):
    """Builds are bit-exact per CPU type only. A rebuild of the listed recipe that gives other data (here:
    the listed row says so) keeps the listed row, which the recorded runs were trained on, and goes to
    builds.csv; an identical rebuild is logged as such; another recipe (seed) replaces the row."""
    monkeypatch.setitem(RECIPES, "hopper-random", Recipe("Hopper-v5", RANDOM, steps=400))
    csv_path = store / "datasets.csv"
    first = _build(store, steps=None, results_csv=csv_path, record_results=True, force=True, num_envs=RECIPE_ENVS)
    again = _build(store, steps=None, results_csv=csv_path, record_results=True, force=True, num_envs=RECIPE_ENVS)
    assert again["return_mean"] == first["return_mean"] and again["machine"] == cpu_signature()
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    row["return_mean"] = str(first["return_mean"] + 1.0)  # as if listed from a build on another CPU
    listing.upsert_row(csv_path, row)
    _build(store, steps=None, results_csv=csv_path, record_results=True, force=True, num_envs=RECIPE_ENVS)
    with open(csv_path, newline="") as f:
        assert float(next(csv.DictReader(f))["return_mean"]) == first["return_mean"] + 1.0
    monkeypatch.setitem(RECIPES, "hopper-random", Recipe("Hopper-v5", RANDOM, steps=400, seed=5))
    _build(store, steps=None, results_csv=csv_path, record_results=True, force=True, num_envs=RECIPE_ENVS)
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    assert row["seed"] == "5" and float(row["return_mean"]) != first["return_mean"] + 1.0
    with open(store / "builds.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert [r["identical_to_listed"] for r in log] == ["", "True", "False", ""]
    assert {r["machine"] for r in log} == {cpu_signature()}
    assert float(log[2]["listed_return_mean"]) == first["return_mean"] + 1.0


def test_list_build_replaces_the_row_only_for_another_recipe(tmp_path):
    """list_build on records alone: a rebuild of the listed policy/seed/steps/references with other data keeps
    the row (and says why: another CPU, or a medium-replay re-run that did not reproduce the medium actor);
    another policy file replaces it."""
    csv_path = tmp_path / "datasets.csv"
    record = {"dataset": "hopper-medium", "env_id": "Hopper-v5", "kind": "medium", "source": "local",
              "policy": "envs/policies/hopper-medium.npz", "policy_sha256": "aaa", "seed": 0, "steps": 1000,
              "num_envs": 20, "full_recipe": True, "episodes": 10, "return_mean": 500.0, "return_std": 1.0,
              "ref_min_score": 0.0, "ref_max_score": 1000.0, "normalized_mean": 50.0, "machine": "cpu A",
              "code": "envs.build_dataset at rlzoo commit abc", "date": "2026-01-01T00:00:00Z", "replay": None}
    # A log from before the medium_policy_max_abs_diff column: rewritten with it, its row kept.
    (tmp_path / "builds.csv").write_text(",".join(listing.BUILD_LOG_COLUMNS[:13]) + "\nold-build" + "," * 12 + "\n")
    assert "row written" in listing.list_build(csv_path, record)
    assert "most likely a build on another CPU" in listing.list_build(csv_path, {**record, "return_mean": 510.0})
    replay = {**record, "return_mean": 520.0,
              "replay": {"reproduces_medium_policy": False, "medium_policy_max_abs_diff": 4.25}}
    assert "did not reproduce the committed medium actor" in listing.list_build(csv_path, replay)
    logged = {**replay, "return_mean": 540.0, "replay": {**replay["replay"], "actions_log": "envs/replays/x.npz"}}
    assert "replaying the committed action log gave other data" in listing.list_build(csv_path, logged)
    with open(csv_path, newline="") as f:
        assert float(next(csv.DictReader(f))["return_mean"]) == 500.0
    assert "row written" in listing.list_build(csv_path, {**record, "policy_sha256": "bbb", "return_mean": 530.0})
    with open(csv_path, newline="") as f:
        assert float(next(csv.DictReader(f))["return_mean"]) == 530.0
    with open(tmp_path / "builds.csv", newline="") as f:
        reader = csv.DictReader(f)
        log = list(reader)
    assert reader.fieldnames == listing.BUILD_LOG_COLUMNS and log[0]["dataset"] == "old-build"
    assert [r["identical_to_listed"] for r in log[1:]] == ["", "False", "False", "False", ""]
    assert [r["medium_policy_max_abs_diff"] for r in log] == ["", "", "", "4.25", "4.25", ""]
    assert [r["actions_log"] for r in log] == ["", "", "", "", "envs/replays/x.npz", ""]


def test_relist_makes_the_build_on_disk_the_listed_one(store, monkeypatch):
    """--relist: after a rebuild here gave other data than the listed build (which stays, see above), the
    build on disk replaces the listed row without collecting again; a partial build or none is refused."""
    monkeypatch.setitem(RECIPES, "hopper-random", Recipe("Hopper-v5", RANDOM, steps=400))
    csv_path = store / "datasets.csv"
    _build(store, steps=300, results_csv=csv_path, record_results=True, num_envs=RECIPE_ENVS)  # not the recipe's steps
    with pytest.raises(RlzooError, match="not the full recipe"):
        listing.relist("hopper-random", results_csv=csv_path, quiet=True)
    built = _build(store, steps=None, results_csv=csv_path, record_results=True, force=True, num_envs=RECIPE_ENVS)
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    listing.upsert_row(csv_path, {**row, "return_mean": str(built["return_mean"] + 1.0), "episodes": "7"})
    for module in (builder, references):  # the two that collect
        monkeypatch.setattr(module, "collect", lambda *a, **k: pytest.fail("--relist must not collect"))
    listing.relist("hopper-random", results_csv=csv_path, quiet=True)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["return_mean"]) == built["return_mean"]
    assert int(rows[0]["episodes"]) == built["episodes"]
    with pytest.raises(RlzooError, match="not built.*envs.build_dataset walker2d-random"):
        listing.relist("walker2d-random", results_csv=csv_path, quiet=True)
    with pytest.raises(RlzooError, match="separate steps"):
        bd.main(bd.Config(datasets=["hopper-random"], refs_only=True, relist=True))


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_build_writes_under_results_only_with_record(store, tmp_path, monkeypatch, capsys):
    """A user's build writes only to the Minari store: without --record a full-recipe build leaves (a copy of)
    results/ byte-identical and prints the verdict on the listed build; with it, it is logged and listed."""
    monkeypatch.setitem(RECIPES, "hopper-random", Recipe("Hopper-v5", RANDOM, steps=400))
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    csv_path, before = results / "datasets.csv", _digests(results)
    kw = {"steps": None, "results_csv": csv_path, "num_envs": RECIPE_ENVS, "force": True, "quiet": False}
    first = _build(store, **kw)
    assert first["full_recipe"] and _digests(results) == before
    out = capsys.readouterr()
    assert "lists a build of another recipe" in out.out and "--record" in out.out
    assert "400/400" in out.err  # the progress bar over the transitions collected

    _build(store, record_results=True, **kw)  # the maintainer's step: logged and listed
    assert float(listing.listed_row(csv_path, "hopper-random")["return_mean"]) == first["return_mean"]
    assert len(_rows(results / "builds.csv")) == len(_rows(ROOT / "results" / "builds.csv")) + 1
    listed = _digests(results)
    capsys.readouterr()
    _build(store, **kw)
    assert "the same data as the build" in capsys.readouterr().out and _digests(results) == listed
    row = listing.listed_row(csv_path, "hopper-random")
    listing.upsert_row(csv_path, {**row, "return_mean": str(first["return_mean"] + 1.0)})
    listed = _digests(results)
    _build(store, **kw)
    assert "the data differ from the build" in capsys.readouterr().out and _digests(results) == listed


def test_the_command_line_build_leaves_results_untouched(tmp_path, monkeypatch):
    """`python -m envs.build_dataset hopper-random` (the recipe's env count; its steps made small here) writes no
    file under results/ (a copy, and the repository's), nor the reference-score cache (it is current)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setitem(RECIPES, "hopper-random", Recipe("Hopper-v5", RANDOM, steps=400))
    shutil.copytree(ROOT / "results", tmp_path / "results")
    monkeypatch.setattr(listing, "RESULTS_CSV", tmp_path / "results" / "datasets.csv")
    before = _digests(tmp_path / "results"), _digests(ROOT / "results"), sha256(references.REFS_PATH)
    records = bd.main(bd.Config(datasets=("hopper-random",)))
    assert records[0]["full_recipe"] and datasets.load("hopper-random", download=False).source == "local"
    assert (_digests(tmp_path / "results"), _digests(ROOT / "results"), sha256(references.REFS_PATH)) == before
    records = bd.main(bd.Config(datasets=("hopper-random",), force=True, record=True))
    assert listing.listed_row(listing.RESULTS_CSV, "hopper-random")["steps"] == "400"
    assert _digests(ROOT / "results") == before[1]
