"""MBRCSL and the stitching task: the scripted families, the rollout filter, returns-to-go, the behaviour mixture, the
return-conditioned policy, the dataset's Minari round trip, and short runs with and without the model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PENDULUM_ID, load_checkpoint

from algorithms import mbrcsl
from envs import pointmaze as builder
from rlzoo import datasets
from rlzoo import pointmaze as pm
from rlzoo.errors import RlzooError

TINY = dict(env=PENDULUM_ID, max_action=2.0, hidden_dims=(32, 32), batch_size=32, behaviour_steps=50,
            behaviour_hidden_dims=(16, 16), rollout_batch=16, rollout_calls=1, rollout_length=3, rollouts_kept=20,
            termination="never", dynamics_members=2, dynamics_elites=1, dynamics_hidden_dims=(16, 16),
            dynamics_weight_decay=(0.0,) * 3, dynamics_max_epochs=2, eval_episodes=1, quiet=True)


def test_families_never_reach_the_goal_alone_and_meet_at_the_junction():
    import gymnasium as gym

    env = gym.make(pm.ENV_ID)
    rng = np.random.default_rng(0)
    junction = pm.cell_xy(pm.JUNCTION_CELL)
    for family in ("direct", "detour"):
        for i in range(6):
            ep = builder.run_episode(env, family, rng, i)
            assert ep.observations.shape == (pm.HORIZON + 1, 4)
            assert not builder.reaches_goal(ep), (family, i)
            assert np.min(np.linalg.norm(ep.observations[:, :2] - junction, axis=1)) < 0.3, (family, i)
    # the stitched path (the noise-free controller: down to the junction, then right) does reach the goal
    assert builder.reaches_goal(builder.run_episode(env, None, rng, 0))
    env.close()


def test_filter_keeps_exactly_the_rollouts_above_the_threshold():
    returns = np.array([3.0, 7.0, 5.0, 9.0, 5.0, 1.0])
    assert mbrcsl.keep_above(returns, 5.0, 10).tolist() == [1, 3]  # strictly above: the 5.0s are left out
    assert mbrcsl.keep_above(returns, 0.0, 2).tolist() == [0, 1]  # at most `room`, in order
    assert mbrcsl.keep_above(returns, 9.0, 10).tolist() == []
    # a rollout's return counts its real steps only; returns-to-go count down along the rollout
    out = {"rewards": jnp.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]),
           "mask": jnp.array([[True, True], [True, True], [True, False]])}
    assert mbrcsl.rollout_returns(out).tolist() == [3.0, 4.0]
    rtg = mbrcsl.returns_to_go(np.asarray(out["rewards"]), np.asarray(out["mask"]))
    assert rtg[:, 0].tolist() == [3.0, 2.0, 1.0] and rtg[:, 1].tolist() == [4.0, 2.0, 0.0]


def test_data_returns_to_go_restart_at_each_episode():
    ds = dataclasses.make_dataclass("D", ["rewards", "episode_lengths"])(
        np.array([1.0, 2.0, 3.0, 10.0, 20.0], np.float32), np.array([3, 2]))
    assert mbrcsl.data_returns_to_go(ds).tolist() == [6.0, 5.0, 3.0, 30.0, 20.0]
    assert mbrcsl.episode_starts(ds).tolist() == [0, 3]


def test_behaviour_mixture_keeps_both_modes():
    """Half the data goes left, half right from the same states: a Gaussian would average them to 0; the
    mixture samples both."""
    config = mbrcsl.Config(behaviour_steps=400, behaviour_hidden_dims=(32, 32), batch_size=128)
    obs = jnp.tile(jnp.array([[0.1, -0.2]]), (256, 1))
    act = jnp.where(jnp.arange(256)[:, None] % 2 == 0, 0.8, -0.8) * jnp.ones((256, 1))
    params, nll = mbrcsl.fit_behaviour(config, jax.random.key(0), obs, act)
    net = mbrcsl.MixturePolicy(1, config.behaviour_components, (32, 32))
    samples = mbrcsl.mixture_sample(jax.random.key(1), *net.apply(params, obs[:1].repeat(2000, 0)))[:, 0]
    assert 0.3 < float(jnp.mean(samples > 0)) < 0.7
    assert float(jnp.mean(jnp.abs(jnp.abs(samples) - 0.8) < 0.2)) > 0.9
    assert np.isfinite(float(nll))


def test_return_conditioned_policy_reproduces_its_training_actions():
    config = mbrcsl.Config(hidden_dims=(64, 64), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    batch = {"observations": jnp.asarray(rng.normal(size=(16, 3)), jnp.float32),
             "actions": jnp.asarray(rng.uniform(-0.9, 0.9, (16, 2)), jnp.float32),
             "rtg": jnp.asarray(rng.uniform(0, 1, 16), jnp.float32)}
    state = mbrcsl.init_state(config, jax.random.key(0), obs_dim=3, act_dim=2)
    update = jax.jit(mbrcsl.make_update(config))
    first = None
    for _ in range(600):
        state, metrics = update(state, batch)
        first = first if first is not None else float(metrics["rcsl_loss"])
    act = mbrcsl.make_policy(config, 2)
    # conditioned on (target, scale) with nothing collected yet, rtg = target / scale: the training rows' own rtg
    pred = jax.vmap(lambda o, r: act((state["actor"].params, jnp.array([r, 1.0])), o[None], jnp.zeros(1))[0])(
        batch["observations"], batch["rtg"])
    assert float(metrics["rcsl_loss"]) < 0.01 * first
    assert float(jnp.max(jnp.abs(pred - batch["actions"]))) < 0.05


def test_stitch_dataset_round_trips_through_minari(minari_store):
    record = builder.build(episodes_per_family=3, ref_episodes=3)
    ds = datasets.load("pointmaze-stitch", download=False)
    assert ds.source == "local" and ds.env_id == pm.ENV_ID and len(ds) == 6 * pm.HORIZON
    assert ds.ref_min_score == pytest.approx(record["ref_min_score"])
    assert ds.ref_max_score == pytest.approx(record["ref_max_score"])
    assert ds.ref_min_score < ds.episode_returns.min() and ds.episode_returns.max() < ds.ref_max_score
    assert ds.episode_returns.max() == pytest.approx(record["return_max"], rel=1e-5)
    assert builder.build() is None  # on disk: skipped


def test_mbrcsl_and_rcsl_short_runs(pendulum_store, monkeypatch, tmp_path):
    """Pendulum's rewards are negative, so 3-step model rollouts always beat the data's best 200-step episode:
    every seed keeps exactly rollouts_kept rollouts, and is conditioned on the best of them."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    config = mbrcsl.Config(**TINY, num_seeds=2, total_steps=100, chunk=50, eval_every=100,
                           run_dir=str(tmp_path / "mbrcsl"))
    ds = datasets.load(PENDULUM_ID, download=False)
    data, condition, logs = mbrcsl.rcsl_data(config, ds, [0, 1])
    assert [log["rollouts_kept"] for log in logs] == [20, 20]
    assert data["count"].tolist() == [60, 60]  # 20 rollouts x 3 steps, none terminates
    assert (condition[:, 0] > ds.episode_returns.max()).all() and not np.array_equal(data["actions"][0],
                                                                                     data["actions"][1])

    summary = mbrcsl.main(config)
    assert summary["steps"] == 100 and all(np.isfinite(summary["final_scores"][s]) for s in (0, 1))
    # the run drew the same rollouts again (what a resumed run relies on): the same condition per seed
    state, _ = load_checkpoint(tmp_path / "mbrcsl")
    assert np.array_equal(state["['condition']"], condition)
    rcsl = mbrcsl.main(dataclasses.replace(config, no_model=True, run_dir=str(tmp_path / "rcsl")))
    assert all(np.isfinite(rcsl["final_scores"][s]) for s in (0, 1))
    train = np.atleast_1d(np.genfromtxt(tmp_path / "rcsl" / "train.csv", delimiter=",", names=True))
    assert np.isfinite(train["rcsl_loss"]).all()


def test_no_rollout_above_the_data_is_a_clear_error(pendulum_store, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    config = mbrcsl.Config(**{**TINY, "rollout_length": 200}, max_rollout_batches=1)
    ds = datasets.load(PENDULUM_ID, download=False)
    ds.episode_returns = ds.episode_returns * 0 + 1e6  # a best episode no rollout can beat
    with pytest.raises(RlzooError, match="--max-rollout-batches"):
        mbrcsl.rcsl_data(config, ds, [0])
    with pytest.raises(RlzooError, match="--scale-rewards"):
        mbrcsl.make_train(dataclasses.replace(config, scale_rewards=True), ds)


def test_stitch_report_tells_mbrcsl_from_plain_rcsl(tmp_path):
    from benchmarks import stitch
    from benchmarks.results import SCORES_COLUMNS

    def row(run, seed, score, task="pointmaze-stitch", algo="mbrcsl"):
        values = dict(algorithm=algo, task=task, data_source="local", seed=seed, steps=7000, score=score,
                      score_kind="last", wall_s=1, device="cpu", commit="abc", date="2026-12-07",
                      config=run + "/c.json")
        return ",".join(str(values.get(c, "")) for c in SCORES_COLUMNS)

    lines = [",".join(SCORES_COLUMNS)]
    lines += [row("mbrcsl-pointmaze-stitch-s0-n3-7k", s, v) for s, v in enumerate((30.0, 40.0, 50.0))]
    lines += [row("mbrcsl-pointmaze-stitch-s0-n3-7k-rcsl", s, v) for s, v in enumerate((10.0, 12.0, 14.0))]
    lines += [row("iql-hopper-medium-s0-n3-7k", 0, 99.0, task="hopper-medium", algo="iql")]
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    rows = stitch.table(stitch.load(tmp_path / "scores.csv"), reps=200)
    assert [(r["method"], r["seeds"], r["mean"]) for r in rows] == [("MBRCSL", 3, 40.0), ("RCSL (no model)", 3, 12.0)]
    assert rows[0]["iqm_ci_low"] <= rows[0]["iqm"] <= rows[0]["iqm_ci_high"]
