"""The dynamics ensemble (rlzoo.dynamics): fitting, uncertainty, elites, early stopping, rollouts, termination
functions, and saving beside the dataset store. Small networks and data, so that each test takes seconds on a CPU."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import dynamics
from rlzoo.errors import RlzooError
from tests.conftest import PENDULUM_ID, build_pendulum_dataset

OBS_DIM, ACT_DIM = 3, 2
SMALL = dynamics.DynamicsConfig(num_members=3, num_elites=2, hidden_dims=(64, 64), weight_decay=(0.0, 0.0, 0.0),
                                max_epochs=40)


def linear_system(n: int, seed: int, noise: float = 0.01) -> dict:
    """s' = A s + B a + noise, r = sum(s) - 0.1 |a|^2, with s ~ N(0, 1) and a ~ U(-1, 1)."""
    rng = np.random.default_rng(123)  # the system is fixed; `seed` draws the data
    a_mat = 0.9 * np.eye(OBS_DIM) + 0.05 * rng.standard_normal((OBS_DIM, OBS_DIM))
    b_mat = 0.3 * rng.standard_normal((OBS_DIM, ACT_DIM))
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, OBS_DIM)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32)
    s2 = s @ a_mat.T + a @ b_mat.T + noise * rng.standard_normal((n, OBS_DIM))
    r = s.sum(1) - 0.1 * np.square(a).sum(1)
    return {"observations": s, "actions": a, "rewards": r.astype(np.float32),
            "next_observations": s2.astype(np.float32)}


@pytest.fixture(scope="module")
def linear():
    data = linear_system(2000, seed=0)
    model, record = dynamics.fit(**data, config=SMALL, seed=0, progress=False)
    return model, record, data


def test_fits_linear_system(linear):
    model, record, data = linear
    assert record["holdout_rows"] == 400 and record["train_rows"] == 1600  # 20% held out, under the cap of 1000
    test = linear_system(500, seed=1)
    mean, _ = dynamics.predict(model, test["observations"], test["actions"])
    mean = np.asarray(mean[model.elites].mean(0))
    next_mse = np.mean((mean[:, :OBS_DIM] - test["next_observations"]) ** 2)
    change = np.var(test["next_observations"] - test["observations"])
    assert next_mse < 0.01 * change, (next_mse, change)  # noise variance is 1e-4
    assert np.mean((mean[:, -1] - test["rewards"]) ** 2) < 0.01 * np.var(test["rewards"])
    assert record["elite_holdout_mse"] < 1e-3


def test_variance_grows_away_from_data(linear):
    model, _, data = linear
    obs, act = data["observations"][:200], data["actions"][:200]
    near = np.asarray(dynamics.predictive_variance(model, obs, act)).mean()
    far = np.asarray(dynamics.predictive_variance(model, 6 * obs, 6 * act)).mean()
    assert far > 10 * near, (near, far)


def test_elites_are_the_lowest_holdout_members_with_their_best_parameters(linear):
    model, record, data = linear
    losses = np.asarray(record["holdout_mse"])
    assert record["elites"] == np.argsort(losses)[: SMALL.num_elites].tolist() == np.asarray(model.elites).tolist()
    # the parameters kept are those each member had at its best epoch: they reproduce the recorded holdout MSE
    _, holdout = dynamics.holdout_split(2000, SMALL, seed=0)
    mean, _ = dynamics.predict(model, data["observations"][holdout], data["actions"][holdout])
    targets = np.concatenate([data["next_observations"][holdout], data["rewards"][holdout, None]], axis=1)
    np.testing.assert_allclose(np.mean((np.asarray(mean) - targets) ** 2, axis=(1, 2)), losses, rtol=1e-3)


def test_early_stopping_and_same_seed_same_model():
    data = linear_system(300, seed=2)
    config = dynamics.DynamicsConfig(num_members=2, num_elites=1, hidden_dims=(16,), weight_decay=(0.0, 0.0),
                                     min_improvement=0.3, patience=3, max_epochs=500)
    model, record = dynamics.fit(**data, config=config, seed=5, progress=False)
    assert record["stopped"] == "no improvement"
    assert record["epochs"] == max(record["best_epochs"]) + config.patience < 500
    again, _ = dynamics.fit(**data, config=config, seed=5, progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(again)))


def random_policy(obs, key):
    return jax.random.uniform(key, (obs.shape[0], ACT_DIM), minval=-1.0, maxval=1.0)


def first_dim_high(obs, action, next_obs):
    return next_obs[:, 0] > 0.8


def test_rollouts_respect_termination_and_horizon_and_repeat_per_key(linear):
    model, _, data = linear
    start, horizon = data["observations"][:64], 7
    out = dynamics.rollout(model, random_policy, start, jax.random.PRNGKey(3), horizon, first_dim_high)
    out = {k: np.asarray(v) for k, v in out.items()}
    assert out["observations"].shape == (horizon, 64, OBS_DIM) and out["rewards"].shape == (horizon, 64)
    assert (out["step"] == np.arange(horizon)[:, None]).all()
    mask, dones = out["mask"], out["dones"].astype(bool)
    assert mask[0].all() and not dones[~mask].any()
    # a rollout is valid at t + 1 exactly when it was valid at t and not done
    assert (mask[1:] == (mask[:-1] & ~dones[:-1])).all()
    assert (dones == (mask & (out["next_observations"][..., 0] > 0.8))).all()
    assert 0 < dones.sum() and mask[-1].any()  # some terminate, some run the whole horizon
    np.testing.assert_array_equal(out["observations"][0], start)
    alive = mask[1:]
    np.testing.assert_array_equal(out["observations"][1:][alive], out["next_observations"][:-1][alive])
    assert all(np.isfinite(v).all() for v in out.values())
    same = dynamics.rollout(model, random_policy, start, jax.random.PRNGKey(3), horizon, first_dim_high)
    assert all(np.array_equal(out[k], np.asarray(same[k])) for k in out)
    other = dynamics.rollout(model, random_policy, start, jax.random.PRNGKey(4), horizon, first_dim_high)
    assert not np.array_equal(out["next_observations"], np.asarray(other["next_observations"]))
    never = dynamics.rollout(model, random_policy, start, jax.random.PRNGKey(3), horizon,
                             dynamics.never_terminates)
    assert np.asarray(never["mask"]).all() and not np.asarray(never["dones"]).any()


def test_rollouts_sample_only_elites(linear):
    model, _, data = linear
    (outsider,) = set(range(SMALL.num_members)) - set(np.asarray(model.elites).tolist())
    spoiled = jax.tree_util.tree_map(lambda p: p.at[outsider].set(p[outsider] + 100.0), model.params)
    args = (random_policy, data["observations"][:32], jax.random.PRNGKey(0), 5, dynamics.never_terminates)
    a = dynamics.rollout(model, *args)
    b = dynamics.rollout(model.replace(params=spoiled), *args)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_termination_functions_by_name():
    fn = dynamics.termination_fn
    assert fn("halfcheetah-medium") is fn("mujoco/halfcheetah/expert-v0") is dynamics.never_terminates
    assert fn("hopper-medium-replay") is fn("Hopper-v5") is fn("/store/rlzoo-local/hopper/medium-v0") \
        is dynamics.hopper_terminates
    assert fn("walker2d-medium-expert") is dynamics.walker2d_terminates and fn("Ant-v5") is dynamics.ant_terminates
    for name in ("pendulum-controller", "humanoid-medium"):
        with pytest.raises(RlzooError, match="no termination function"):
            fn(name)
    act = jnp.zeros((4, 3))
    hopper = jnp.array([[1.25, 0.0] + [0.0] * 9, [0.6, 0.0] + [0.0] * 9, [1.25, 0.3] + [0.0] * 9,
                        [1.25, 0.0] + [150.0] + [0.0] * 8])
    assert dynamics.hopper_terminates(hopper, act, hopper).tolist() == [False, True, True, True]
    walker = jnp.array([[1.25, 0.0] + [0.0] * 15, [2.1, 0.0] + [0.0] * 15, [1.25, -1.2] + [0.0] * 15,
                        [1.25, 0.0] + [jnp.nan] + [0.0] * 14])
    assert dynamics.walker2d_terminates(walker, act, walker).tolist() == [False, True, True, True]
    ant = jnp.array([[0.55] + [0.0] * 26, [0.1] + [0.0] * 26, [1.1] + [0.0] * 26, [0.55, jnp.inf] + [0.0] * 25])
    assert dynamics.ant_terminates(ant, act, ant).tolist() == [False, True, True, True]
    assert not dynamics.never_terminates(ant, act, ant * 1e6).any()


def test_saved_model_reloads_bit_exactly_and_other_data_or_shapes_are_refused(minari_store):
    from rlzoo import datasets

    build_pendulum_dataset(episodes=2)
    data = datasets.load(PENDULUM_ID, download=False)
    config = dynamics.DynamicsConfig(num_members=2, num_elites=1, hidden_dims=(16,), weight_decay=(0.0, 0.0),
                                     max_epochs=3)
    model, record = dynamics.load_or_train(data, config, seed=1, progress=False)
    directory = dynamics.model_dir(data, config, seed=1)
    assert not record["reused"] and record["directory"] == str(directory)
    assert directory.parent.parent == minari_store.parent / "rlzoo-dynamics"
    assert (directory / "record.json").is_file() and record["dataset"]["dataset_ids"] == [PENDULUM_ID]
    again, record2 = dynamics.load_or_train(data, config, seed=1, progress=False)
    assert record2["reused"] and record2["holdout_mse"] == record["holdout_mse"]
    leaves, leaves2 = jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(again)
    assert len(leaves) == len(leaves2)
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(leaves, leaves2))
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(again)

    other = dynamics.DynamicsConfig(num_members=2, num_elites=1, hidden_dims=(32,), weight_decay=(0.0, 0.0),
                                    max_epochs=3)
    with pytest.raises(RlzooError, match=r"hidden_dims \(16,\) vs \(32,\)"):
        dynamics.load(directory, data, other)

    # the dataset rebuilt under the same id with other data: the saved model is refused, naming both builds
    shutil.rmtree(minari_store / PENDULUM_ID)
    build_pendulum_dataset(episodes=2, seed=7)
    rebuilt = datasets.load(PENDULUM_ID, download=False)
    old, new = record["dataset"]["data_sha256"][:12], dynamics.dataset_identity(rebuilt)["data_sha256"][:12]
    with pytest.raises(RlzooError) as err:
        dynamics.load_or_train(rebuilt, config, seed=1, progress=False)
    message = str(err.value)
    assert "trained on other data" in message and old in message and new in message and str(directory) in message
    _, fresh = dynamics.load_or_train(rebuilt, config, seed=1, retrain=True, progress=False)
    assert not fresh["reused"] and fresh["dataset"]["data_sha256"][:12] == new


def test_model_error_benchmark_reconstructs_the_real_state_and_records(inverted_pendulum_store, monkeypatch, tmp_path):
    """benchmarks.dynamics replays dataset actions in the real env from states set from observations: on
    InvertedPendulum (observation = qpos and qvel) the replay matches the recorded next observations exactly."""
    import csv

    from benchmarks import dynamics as bench
    from tests.conftest import INVERTED_PENDULUM_ID, assert_figure

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(inverted_pendulum_store))
    bench.main(["error", "--datasets", INVERTED_PENDULUM_ID, "--starts", "20", "--horizon", "3", "--max-epochs", "2",
                "--record", "--out", str(tmp_path)])
    with (tmp_path / "model_error.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    replay = [r for r in rows if r["measure"] == "replay"]
    assert len(replay) == 1 and float(replay[0]["obs_mse"]) < 1e-8 and int(replay[0]["n"]) == 20
    rollout = {(int(r["k"]), r["mode"]): r for r in rows if r["measure"] == "rollout"}
    assert set(rollout) == {(k, m) for k in (1, 2, 3) for m in ("sampled", "mean")}
    assert all(float(r["obs_nmse"]) > 0 and r["commit"] and r["jax"] for r in rows)
    assert_figure(tmp_path / "model_error.png")
