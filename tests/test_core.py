"""Behavioural tests of the shared core: networks, sampling, replay, checkpoints, the run loop, errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from algorithms import iql
from rlzoo import buffers, datasets, networks, offline
from rlzoo.checkpoint import Checkpointer, load_params, save_params
from rlzoo.devices import seed_keys
from rlzoo.envs import check_env_id
from rlzoo.errors import NonFiniteLossError, RlzooError
from rlzoo.logger import RunLogger
from rlzoo.options import RunConfig
from rlzoo.run import Run

# ---------------------------------------------------------------------------------------------- networks


def test_ensemble_matches_separate_critics():
    n, hidden = 3, (8, 8)
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    act = jax.random.uniform(jax.random.PRNGKey(2), (5, 2), minval=-1, maxval=1)
    ensemble = networks.Ensemble(networks.Critic, n, {"hidden_dims": hidden})
    params = ensemble.init(jax.random.PRNGKey(0), obs, act)
    for leaf in jax.tree_util.tree_leaves(params):
        assert leaf.shape[0] == n
    out = ensemble.apply(params, obs, act)
    assert out.shape == (n, 5)

    critic = networks.Critic(hidden_dims=hidden)
    (member_tree,) = params["params"].values()  # the one vmapped submodule
    single_like = critic.init(jax.random.PRNGKey(9), obs, act)["params"]
    assert jax.tree_util.tree_structure(member_tree) == jax.tree_util.tree_structure(single_like)
    for i in range(n):
        member = jax.tree_util.tree_map(lambda x, i=i: x[i], member_tree)
        np.testing.assert_allclose(critic.apply({"params": member}, obs, act), out[i], rtol=1e-6, atol=1e-6)
    # Members are initialized independently, so they disagree.
    assert not np.allclose(out[0], out[1])

    # The other direction: n separately initialized Critics, stacked, give the ensemble's outputs.
    separate = [critic.init(jax.random.PRNGKey(100 + i), obs, act)["params"] for i in range(n)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *separate)
    name = next(iter(params["params"]))
    out2 = ensemble.apply({"params": {name: stacked}}, obs, act)
    for i in range(n):
        np.testing.assert_allclose(critic.apply({"params": separate[i]}, obs, act), out2[i], rtol=1e-6,
                                   atol=1e-6)


def test_offline_chunk_returns_each_updates_metrics_by_name():
    """`offline.make_train` sends an update's scalar metrics out of the scan as one row per update and hands them
    back by name (in JAX's sorted key order, as any dict output), [seeds, updates] each, with each update's own
    values."""
    data = {"observations": jnp.arange(40.0).reshape(20, 2), "actions": jnp.zeros((20, 1)),
            "rewards": jnp.arange(20.0), "next_observations": jnp.zeros((20, 2)), "dones": jnp.zeros(20)}

    def update(state, batch):
        step = state["step"] + 1
        return {**state, "step": step}, {"z_loss": step * 2.0, "a_mean": batch["rewards"].mean(), "count": step}

    config = offline.OfflineConfig(chunk=5, batch_size=4)
    train_chunk = offline.make_train(update, config)
    state = {"step": jnp.zeros(2, jnp.int32), "key": jax.vmap(jax.random.PRNGKey)(jnp.arange(2))}
    state, metrics = train_chunk(state, data)
    assert list(metrics) == ["a_mean", "count", "z_loss"]
    assert all(v.shape == (2, 5) and v.dtype == jnp.float32 for v in metrics.values())
    np.testing.assert_array_equal(metrics["z_loss"], np.tile(2.0 * np.arange(1, 6), (2, 1)))
    np.testing.assert_array_equal(metrics["count"], np.tile(np.arange(1, 6), (2, 1)))
    assert np.all((metrics["a_mean"] >= 0) & (metrics["a_mean"] <= 19)) and not np.allclose(*metrics["a_mean"])
    np.testing.assert_array_equal(state["step"], [5, 5])


def _tanh_gaussian_logpdf64(a, mean, log_std):
    """log density of a = tanh(u), u ~ N(mean, std), by change of variables, in float64 numpy."""
    a, mean, std = np.asarray(a, np.float64), np.asarray(mean, np.float64), np.exp(np.asarray(log_std, np.float64))
    u = np.arctanh(a)
    return np.sum(stats.norm.logpdf(u, mean, std) - np.log1p(-a**2), axis=-1)


@pytest.mark.parametrize("act_dim", [1, 3])
def test_sample_tanh_gaussian_log_prob_and_range(act_dim):
    n = 4096
    mean = jnp.broadcast_to(jnp.linspace(-0.8, 0.6, act_dim), (n, act_dim))
    log_std = jnp.broadcast_to(jnp.linspace(-1.0, -0.3, act_dim), (n, act_dim))
    a, logp = networks.sample_tanh_gaussian(jax.random.PRNGKey(0), mean, log_std)
    a, logp = np.asarray(a), np.asarray(logp)
    assert a.shape == (n, act_dim) and logp.shape == (n,)
    assert np.all(np.abs(a) < 1.0)
    # arctanh in float64 is only accurate away from +-1; these parameters keep almost all samples there.
    ok = np.max(np.abs(a), axis=-1) < 0.995
    assert ok.mean() > 0.95
    expected = _tanh_gaussian_logpdf64(a[ok], mean[ok], log_std[ok])
    np.testing.assert_allclose(logp[ok], expected, rtol=2e-3, atol=2e-3)
    # The samples follow the distribution: bin frequencies of the first dimension match the CDF.
    edges = np.array([-1.0, -0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9, 1.0])
    m, s = float(mean[0, 0]), float(np.exp(log_std[0, 0]))
    cdf = stats.norm.cdf((np.arctanh(np.clip(edges, -1 + 1e-12, 1 - 1e-12)) - m) / s)
    expected_counts = np.diff(cdf) * n
    counts = np.histogram(a[:, 0], edges)[0]
    keep = expected_counts > 5
    chi2 = np.sum((counts[keep] - expected_counts[keep]) ** 2 / expected_counts[keep])
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3


def test_sample_tanh_gaussian_is_stable_for_saturated_actions():
    # Far in the tails tanh rounds to +-1 in float32; the log-prob (computed from u) must stay finite
    # and match the change of variables in float64.
    mean = jnp.array([[6.0, -6.0]])
    log_std = jnp.array([[-3.0, -3.0]])
    key = jax.random.PRNGKey(3)
    a, logp = networks.sample_tanh_gaussian(key, mean, log_std)
    assert np.all(np.abs(np.asarray(a)) <= 1.0)
    assert np.isfinite(logp).all()
    u = np.asarray(mean, np.float64) + np.exp(-3.0) * np.asarray(jax.random.normal(key, mean.shape), np.float64)
    log_jac = np.log(4.0) - 2 * np.abs(u) - 2 * np.log1p(np.exp(-2 * np.abs(u)))  # log(1 - tanh(u)^2)
    expected = np.sum(stats.norm.logpdf(u, np.asarray(mean, np.float64), np.exp(-3.0)) - log_jac)
    np.testing.assert_allclose(float(logp[0]), expected, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- replay


def _rows(start: int, n: int) -> dict:
    values = np.arange(start, start + n, dtype=np.float32)
    return {"x": jnp.asarray(values), "y": jnp.asarray(np.stack([values, -values], 1))}


def test_replay_add_wraps_around_fifo():
    buf = buffers.replay_init({"x": jnp.float32(0), "y": jnp.zeros(2)}, capacity=5)
    assert int(buf.size) == 0 and int(buf.ptr) == 0 and buf.capacity == 5
    buf = buffers.replay_add(buf, _rows(1, 3))  # rows 1, 2, 3
    assert int(buf.size) == 3 and int(buf.ptr) == 3
    buf = buffers.replay_add(buf, _rows(4, 4))  # rows 4..7: 6 and 7 overwrite 1 and 2
    assert int(buf.size) == 5 and int(buf.ptr) == 2
    np.testing.assert_array_equal(buf.data["x"], [6, 7, 3, 4, 5])
    np.testing.assert_array_equal(buf.data["y"][:, 1], [-6, -7, -3, -4, -5])
    assert buf.data["x"].dtype == jnp.float32 and buf.size.dtype == jnp.int32 and buf.ptr.dtype == jnp.int32


def test_replay_sample_is_uniform_over_added_rows():
    buf = buffers.replay_init({"x": jnp.float32(0), "y": jnp.zeros(2)}, capacity=64)
    buf = buffers.replay_add(buf, _rows(1, 10))  # values 1..10; rows 10..63 stay zero
    n = 50_000
    batch = jax.jit(buffers.replay_sample, static_argnums=2)(buf, jax.random.PRNGKey(0), n)
    x = np.asarray(batch["x"])
    assert set(np.unique(x)) <= set(range(1, 11))
    np.testing.assert_array_equal(np.asarray(batch["y"])[:, 1], -x)  # rows stay aligned across keys
    counts = np.bincount(x.astype(int), minlength=11)[1:]
    assert np.all(np.abs(counts - n / 10) < 0.05 * n / 10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_replay_works_inside_scan_under_jit():
    capacity, steps = 4, 7

    @jax.jit
    def run(key):
        buf = buffers.replay_init({"x": jnp.float32(0), "y": jnp.zeros(2)}, capacity)

        def body(buf, inp):
            t, k = inp
            v = t.astype(jnp.float32) + 1.0
            buf = buffers.replay_add(buf, {"x": v[None], "y": jnp.stack([v, -v])[None]})
            sample = buffers.replay_sample(buf, k, 32)["x"]
            return buf, (sample, buf.size, buf.ptr)

        return jax.lax.scan(body, buf, (jnp.arange(steps), jax.random.split(key, steps)))

    buf, (samples, sizes, ptrs) = run(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(sizes, [1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(ptrs, [1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(buf.data["x"], [5, 6, 7, 4])
    for t in range(steps):  # every sample is one of the rows present at that time
        present = set(range(max(1, t + 2 - capacity), t + 2))
        assert set(np.asarray(samples[t]).astype(int)) <= present


# ---------------------------------------------------------------------------------------------- checkpoints


@functools.cache
def _iql_state(num_seeds=2, updates=3):
    """An IQL training state (seed axis `num_seeds`) after `updates` updates, a fresh-state factory, and a
    function that trains a copy of a state for one more chunk on the same data.

    The shapes (3-d observations, 1-d actions, 32x32 nets, 2 seeds) and the eager `vmap(init_state)` are those
    of the Pendulum IQL runs in test_iql.py, so the compiled initialization ops are shared with them."""
    config = iql.Config(hidden_dims=(32, 32), batch_size=8, chunk=updates, total_steps=100)
    obs_dim, act_dim = 3, 1
    rng = np.random.default_rng(0)
    data = {"observations": rng.normal(size=(50, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, size=(50, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=50).astype(np.float32),
            "next_observations": rng.normal(size=(50, obs_dim)).astype(np.float32),
            "dones": np.zeros(50, np.float32)}

    def fresh():
        return jax.vmap(lambda k: iql.init_state(config, k, obs_dim, act_dim))(seed_keys(list(range(num_seeds))))

    train_chunk = iql.make_train(config)
    state, _ = train_chunk(fresh(), jax.device_put(data))
    # train_chunk donates its state: train a copy, so that the cached state stays alive.
    return state, fresh, lambda s: train_chunk(jax.tree_util.tree_map(jnp.copy, s), jax.device_put(data))[0]


def test_checkpoint_roundtrip_of_iql_state_is_bit_exact(tmp_path):
    state, fresh, train_on = _iql_state()
    # Sanity: the optimizer state is not the initial one.
    assert int(state["actor"].step[0]) == 3
    assert float(jnp.abs(state["critic"].opt_state[0].mu["params"]["VmapCritic_0"]["MLP_0"]["Dense_0"]
                         ["kernel"]).max()) > 0
    ckpt = Checkpointer(tmp_path)
    meta = {"step": 3, "host": {"big": 2**100, "list": [1.5, -2.0]}}
    ckpt.save(3, state, meta)
    ckpt.wait()
    ckpt.close()

    like = fresh()
    restored, meta2 = Checkpointer(tmp_path).restore(like)
    assert meta2 == meta
    # Same containers as the template (TrainState, Adam states, ...) and the same leaves as the original;
    # the static fields (apply_fn, tx) are the template's, freshly built, so compare paths, not treedefs.
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(like)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert [p for p, _ in jax.tree_util.tree_flatten_with_path(restored)[0]] == paths
    leaves, restored_leaves = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)
    assert len(leaves) == len(restored_leaves) > 20
    for a, b in zip(leaves, restored_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert not isinstance(b, np.ndarray)  # restored onto the device as jax arrays
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # bits, not values (-0.0, NaN)
    np.testing.assert_array_equal(restored["key"], state["key"])
    assert restored["key"].dtype == jnp.uint32
    for name in ("actor", "critic", "value"):
        opt, opt2 = state[name].opt_state, restored[name].opt_state
        assert [type(s) for s in opt] == [type(s) for s in opt2]
        assert isinstance(opt2[0], optax.ScaleByAdamState)
    # The restored state trains on exactly like the original (same apply_fn / tx, RNG keys, optimizer moments).
    after, restored_after = jax.tree_util.tree_leaves(train_on(state)), jax.tree_util.tree_leaves(train_on(restored))
    assert any(not np.array_equal(a, b) for a, b in zip(after, leaves))  # the chunk changed the state
    for a, b in zip(after, restored_after):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_checkpoint_restore_without_checkpoint_raises(tmp_path):
    _, fresh, _ = _iql_state()
    with pytest.raises(RlzooError, match="no checkpoint"):
        Checkpointer(tmp_path).restore(fresh())


def test_a_corrupt_checkpoint_is_reported_with_the_way_back_to_the_older_one(tmp_path):
    ckpt = Checkpointer(tmp_path)
    state = {"w": jnp.arange(512.0)}
    ckpt.save(10, state, {"step": 10})
    ckpt.save(20, {"w": state["w"] + 1}, {"step": 20})
    for f in (tmp_path / "checkpoints" / "20" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:16])
    with pytest.raises(RlzooError, match=r"checkpoint at step 20 .* is damaged.*one at step 10 can.*mv ") as err:
        Checkpointer(tmp_path).restore({"w": jnp.zeros(512)})
    bad = tmp_path / "checkpoints" / "20"
    # A template that fits no checkpoint (the code changed) is not blamed on the newest one.
    with pytest.raises(RlzooError, match=r"no checkpoint in .* can be restored into this run"):
        Checkpointer(tmp_path).restore({"w": jnp.zeros(7)})
    assert f"mv {bad.resolve()} {bad.resolve()}.corrupt" in str(err.value)
    bad.resolve().rename(f"{bad.resolve()}.corrupt")  # what the message says to do
    restored, meta = Checkpointer(tmp_path).restore({"w": jnp.zeros(512)})
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert meta["step"] == 10


def test_save_and_load_params_roundtrip(tmp_path):
    state, _, _ = _iql_state()
    params = jax.tree_util.tree_map(lambda x: x[0], state["actor"].params)
    save_params(tmp_path / "sub" / "policy.npz", params, meta={"env": "Pendulum-v1", "hidden_dims": [16, 16]})
    loaded, meta = load_params(tmp_path / "sub" / "policy.npz")
    assert meta == {"env": "Pendulum-v1", "hidden_dims": [16, 16]}
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(jax.device_get(params))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(RlzooError, match="cannot read parameters"):
        load_params(tmp_path / "missing.npz")
    whole = (tmp_path / "sub" / "policy.npz").read_bytes()
    for cut in (len(whole) // 2, 100):  # a truncated file: a broken zip member, or no zip directory at all
        (tmp_path / "cut.npz").write_bytes(whole[:cut])
        with pytest.raises(RlzooError, match="cut.npz .*missing or corrupt"):
            load_params(tmp_path / "cut.npz")


# ---------------------------------------------------------------------------------------------- run loop


def _two_seed_run(tmp_path, total_steps: int):
    """A run of 2 seeds in chunks of 10 steps, evaluated and checkpointed after each chunk, and its logger."""
    config = RunConfig(env="fake", seed=0, num_seeds=2, total_steps=total_steps, chunk=10, eval_every=10,
                       checkpoint_every=10, run_dir=str(tmp_path / "run"), quiet=True)
    run = Run.start(config, "fake")
    return run, run.make_logger("score")


def test_run_helpers_fresh_start_policy_file_and_logged_config(tmp_path, monkeypatch):
    """A fresh run starts from its own state at step 0; `save_policy` records env, seeds, final step, algorithm
    and the extras; `make_logger` names the run <algorithm>-<env> and logs the extras beside the hyperparameters."""
    config = RunConfig(env="fake", seed=3, num_seeds=2, total_steps=20, chunk=10, eval_every=10,
                       checkpoint_every=10, run_dir=str(tmp_path / "run"), quiet=True, wandb=True)
    run = Run.start(config, "algo")
    state = {"w": jnp.ones((2, 3))}
    got = run.restore(state)
    assert got is state and run.start_step == 0 and run.host == {}

    run.save_policy({"layer": {"kernel": np.arange(3.0)}}, backend="minatar")
    params, meta = load_params(run.run_dir / "policy.npz")
    assert meta == {"env": "fake", "backend": "minatar", "seeds": [3, 4], "step": 20, "algorithm": "algo"}
    np.testing.assert_array_equal(params["layer"]["kernel"], np.arange(3.0))

    logged = {}
    monkeypatch.setattr(RunLogger, "_init_wandb", lambda self, cfg, project, mode: logged.update(cfg))
    logger = run.make_logger("return", extra_config={"dataset_id": "x", "seed": 99})
    assert logger.name == "algo-fake" and logger.seeds == [3, 4]
    assert logged["dataset_id"] == "x" and logged["total_steps"] == 20 and logged["seed"] == 99  # extras win
    logger.close()


class _HostThing:
    """A host-side object a checkpoint saves (as HostVectorEnv does): get_state() / set_state(state)."""

    def __init__(self, value):
        self.value = value

    def get_state(self):
        return {"value": self.value}

    def set_state(self, state):
        self.value = state["value"]


def test_restore_puts_host_objects_back_and_refuses_a_checkpoint_without_one(tmp_path):
    """Host objects given to `restore` are saved with every checkpoint and set back on resume; a checkpoint that
    lacks one of them cannot continue the run."""
    config = RunConfig(env="fake", num_seeds=2, total_steps=20, chunk=10, eval_every=10, checkpoint_every=10,
                       run_dir=str(tmp_path / "run"), quiet=True)
    run = Run.start(config, "fake")
    thing = _HostThing(7)
    assert run.restore({"w": jnp.zeros((2, 3))}, host={"other": thing}) is not None and thing.value == 7
    chunk = lambda state: ({"w": state["w"] + 1.0}, {"loss": np.ones((2, 10), np.float32)})
    evaluate = lambda state: (np.zeros((2, 1)), np.zeros(2))
    state = run.train({"w": jnp.arange(6.0).reshape(2, 3)}, chunk, evaluate, "score")
    run.logger.close()
    run.checkpointer.close()
    assert Checkpointer(run.run_dir).restore(state)[1]["host"] == {"other": {"value": 7}}

    resumed = Run.start(RunConfig(resume=str(run.run_dir), quiet=True), "fake")
    fresh = _HostThing(0)
    got = resumed.restore({"w": jnp.zeros((2, 3))}, host={"other": fresh})
    np.testing.assert_array_equal(got["w"], np.arange(6.0).reshape(2, 3) + 2.0)
    assert resumed.start_step == resumed.step == 20 and fresh.value == 7
    with pytest.raises(RlzooError, match="checkpoint at step 20 holds no envs state"):
        resumed.restore({"w": jnp.zeros((2, 3))}, host={"envs": _HostThing(0)})


def test_train_stops_on_nan_and_keeps_last_good_checkpoint(tmp_path):
    chunk_len = 10
    run, logger = _two_seed_run(tmp_path, total_steps=50)
    calls = []

    def chunk(state):
        calls.append(1)
        good = np.ones((2, chunk_len), np.float32)
        metrics = {"actor_loss": good.copy(), "critic_loss": good.copy()}
        if len(calls) == 2:
            # The first non-finite value overall is critic_loss at update 3 of seed 1 (step 10 + 4);
            # actor_loss (alphabetically first) only breaks later, at update 7 (step 18).
            metrics["critic_loss"][1, 3] = np.nan
            metrics["critic_loss"][0, 5] = np.inf
            metrics["actor_loss"][0, 7] = np.nan
        return {"w": state["w"] + 1.0}, metrics

    evaluate = lambda state: (np.zeros((2, 1)), np.zeros(2))
    with pytest.raises(NonFiniteLossError) as info:
        run.train({"w": jnp.zeros((2, 3))}, chunk, evaluate, "score")
    message = str(info.value)
    assert "'critic_loss'" in message
    assert "at step 14 " in message
    assert "seed 1" in message
    assert "(step 10)" in message  # the last good checkpoint
    assert str(run.run_dir) in message  # how to resume
    assert len(calls) == 2
    steps = sorted(int(p.name) for p in (run.run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [10]
    assert [p.name for p in (run.run_dir / "checkpoints").iterdir()] == ["10"]  # nothing half-written
    restored, meta = Checkpointer(run.run_dir).restore({"w": jnp.zeros((2, 3))})
    assert meta["step"] == 10
    np.testing.assert_array_equal(restored["w"], np.ones((2, 3)))
    logger.close()


def test_nan_parameters_behind_finite_losses_are_never_checkpointed(tmp_path):
    """Losses are computed before each update, so the last update of a chunk can break the parameters while
    every reported loss is finite: the state itself is checked before it is saved as a good checkpoint."""
    run, logger = _two_seed_run(tmp_path, total_steps=30)
    calls = []

    def chunk(state):
        calls.append(1)
        w = state["w"] + 1.0
        if len(calls) == 2:
            w = w.at[1, 2].set(jnp.nan)
        return {"w": w, "step": state["step"] + 10}, {"loss": np.ones((2, 10), np.float32)}

    evaluate = lambda state: (np.zeros((2, 1)), np.zeros(2))
    state = {"w": jnp.zeros((2, 3)), "step": jnp.zeros((2,), jnp.int32)}
    with pytest.raises(NonFiniteLossError, match=r"parameters became NaN/inf by step 20.*\(step 10\)"):
        run.train(state, chunk, evaluate, "score")
    assert sorted(p.name for p in (run.run_dir / "checkpoints").iterdir()) == ["10"]
    logger.close()


def test_a_run_directory_in_use_by_a_live_process_is_refused(tmp_path):
    import subprocess

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / "run.pid").write_text(str(other.pid))
        with pytest.raises(RlzooError, match=f"in use by process {other.pid}"):
            Run.start(RunConfig(run_dir=str(run_dir)), "iql")
    finally:
        other.kill()
        other.wait()
    Run.start(RunConfig(run_dir=str(run_dir)), "iql")  # a claim left by a dead process is taken over
    assert (run_dir / "run.pid").read_text() == str(__import__("os").getpid())


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_env_id_lists_close_matches():
    check_env_id("Pendulum-v1")  # a registered id passes
    with pytest.raises(RlzooError) as info:
        check_env_id("HalfCheetah-v4x")
    message = str(info.value)
    assert "unknown environment 'HalfCheetah-v4x'" in message
    assert "Close matches:" in message and "HalfCheetah-v4" in message and "HalfCheetah-v5" in message


def test_dataset_typo_suggests_alias(minari_store):
    with pytest.raises(RlzooError) as info:
        datasets.resolve("halfcheeta-medium", download=False)
    message = str(info.value)
    assert "unknown dataset 'halfcheeta-medium'" in message
    matches = message.split("Close matches:")[1].split(".")[0]
    assert matches.split(",")[0].strip() == "halfcheetah-medium"
    assert message.endswith("Build a local dataset with: python -m envs.build_dataset halfcheetah-medium")


@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_fails_fast_with_build_command(minari_store, monkeypatch, download):
    if download and datasets.remote_reachable(timeout=2):  # simulate having no network
        def refuse(*args, **kwargs):
            raise OSError("network is unreachable")

        monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.perf_counter()
    with pytest.raises(RlzooError) as info:
        datasets.load("halfcheetah-medium", download=download)
    assert time.perf_counter() - t0 < 10.0
    message = str(info.value)
    assert "python -m envs.build_dataset halfcheetah-medium" in message
    assert "mujoco/halfcheetah/medium-v0" in message  # says what was tried
    assert "rlzoo-local/halfcheetah/medium-v0" in message
    if download:
        assert "remote unreachable" in message


def test_resume_from_empty_dir_raises(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RlzooError, match="no checkpoint found"):
        Run.start(RunConfig(resume=str(empty)), "iql")
    with pytest.raises(RlzooError, match="no checkpoint found"):
        Run.start(RunConfig(resume=str(tmp_path / "does-not-exist")), "iql")


def test_resume_with_another_algorithms_file_names_the_right_one(tmp_path):
    run = Run.start(RunConfig(env="fake", run_dir=str(tmp_path / "r"), quiet=True), "sac")
    assert json.loads((run.run_dir / "config.json").read_text())["algorithm"] == "sac"
    run.checkpointer.save(1000, {"w": jnp.zeros(3)}, {"step": 1000})
    with pytest.raises(RlzooError, match=r"holds a sac run, not iql.*the sac algorithm's own file"):
        Run.start(RunConfig(resume=str(tmp_path / "r")), "iql")


def test_start_rejects_chunk_mismatch(tmp_path):
    with pytest.raises(RlzooError, match="multiple of --chunk"):
        Run.start(RunConfig(run_dir=str(tmp_path / "r"), chunk=300, eval_every=1000, total_steps=3000,
                            checkpoint_every=3000), "iql")


@pytest.mark.parametrize("flag, value, says", [
    ("batch_size", 0, "--batch-size 0: must be at least 1"),
    ("expectile", 1.0, "--expectile 1.0: must be in (0, 1)"),
    ("hidden_dims", (256, 0), "--hidden-dims 256 0: each entry must be at least 1"),
    ("beta", -1.0, "--beta -1.0: must be at least 0"),
    ("gamma", float("nan"), "--gamma is NaN"),
    ("num_seeds", 0, "--num-seeds 0: must be at least 1"),
])
def test_start_refuses_an_out_of_range_option_before_making_the_run_dir(tmp_path, flag, value, says):
    config = dataclasses.replace(iql.Config(run_dir=str(tmp_path / "r")), **{flag: value})
    with pytest.raises(RlzooError) as err:
        Run.start(config, "iql")
    assert str(err.value).startswith(says)
    assert not (tmp_path / "r").exists()


def test_every_numeric_option_of_every_algorithm_has_a_range():
    """Every numeric option declares its range beside its field (rlzoo.options.option), and the defaults lie in it."""
    import importlib

    from rlzoo.options import RANGE_KEY, check_option_ranges, numeric_fields

    names = sorted(p.stem for p in (Path(__file__).parents[1] / "algorithms").glob("*.py") if p.stem != "__init__")
    assert {"iql", "td3_bc", "cql", "sac", "pqn", "pqn_atari"} <= set(names)
    for name in names:
        config_cls = importlib.import_module(f"algorithms.{name}").Config
        config = config_cls()
        check_option_ranges(config)  # the defaults are in range
        if name in ("td3_bc", "iql"):  # 0 switches the RL term off (behaviour cloning): allowed
            check_option_ranges(dataclasses.replace(config, **{"alpha" if name == "td3_bc" else "beta": 0.0}))
        missing = [f.name for f in numeric_fields(config_cls) if RANGE_KEY not in f.metadata]
        assert not missing, (name, missing)


def test_seed_keys_are_distinct_and_match_prngkey():
    keys = seed_keys([0, 1, 5])
    assert keys.shape[0] == 3
    np.testing.assert_array_equal(keys[2], jax.random.PRNGKey(5))
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == 3


def test_wall_time_and_commits_are_carried_across_resume(tmp_path, monkeypatch):
    from rlzoo import provenance

    monkeypatch.setattr(provenance, "commit", lambda: "aaa1111")  # the first process's code

    class Killed(Exception):
        pass

    calls = []

    def chunk(state):
        calls.append(1)
        if len(calls) == 3:  # the first process dies in its third chunk, after checkpoints at 10 and 20
            raise Killed
        return {"w": state["w"] + 1.0}, {"loss": np.ones((1, 10), np.float32)}

    config = RunConfig(env="fake", seed=0, num_seeds=1, total_steps=40, chunk=10, eval_every=10,
                       checkpoint_every=10, run_dir=str(tmp_path / "run"), quiet=True)
    evaluate = lambda state: (np.zeros((1, 1)), np.zeros(1))
    run = Run.start(config, "fake")
    with pytest.raises(Killed):
        run.train({"w": jnp.zeros((1, 3))}, chunk, evaluate, "return")
    run.logger.close()
    run.checkpointer.close()
    first = Checkpointer(run.run_dir).restore({"w": jnp.zeros((1, 3))})[1]["wall_s"]
    assert 0 < first < 60

    # A second process, at another commit, restores the newest checkpoint as an algorithm does on --resume.
    monkeypatch.setattr(provenance, "commit", lambda: "bbb2222")
    run = Run.start(dataclasses.replace(config, resume=str(run.run_dir), run_dir=None), "fake")
    state = run.restore({"w": jnp.zeros((1, 3))})
    assert run.start_step == 20 and run.host == {}
    np.testing.assert_array_equal(state["w"], np.full((1, 3), 2.0))
    run.train(state, chunk, evaluate, "return")
    last = Checkpointer(run.run_dir).restore(state)[1]["wall_s"]
    assert last > first
    summary = run.finish(task="fake", data_source="online")
    assert last <= summary["wall_s"] < last + 5  # the final checkpoint's save is the only time after it
    assert summary["commits"] == ["aaa1111", "bbb2222"] and summary["commit"] == "aaa1111;bbb2222"
    # A finished run is not resumed again: that would record its scores twice.
    with pytest.raises(RlzooError, match="that run has finished"):
        Run.start(dataclasses.replace(config, resume=str(run.run_dir), run_dir=None), "fake")


def _tiny_dataset(ref_max: float = 100.0, n: int = 6) -> datasets.OfflineDataset:
    z = np.zeros((n, 2), np.float32)
    return datasets.OfflineDataset(
        name="hopper-medium", source="local", dataset_ids=["rlzoo-local/hopper/medium-v0"], env_id="Hopper-v5",
        observations=z, actions=z, rewards=np.ones(n, np.float32), next_observations=z,
        terminals=np.zeros(n, np.float32), timeouts=np.zeros(n, np.float32),
        episode_returns=np.array([3.0, 2.0, 1.0]), episode_complete=np.array([True, True, False]),
        ref_min_score=0.0, ref_max_score=ref_max)


def test_resume_refuses_a_dataset_rebuilt_or_renormalized_meanwhile(tmp_path):
    datasets.pin_to_run(_tiny_dataset(), tmp_path, resuming=False)
    record = (tmp_path / "dataset.json").read_text()
    assert '"return_mean": 2.5' in record  # the budget-cut fragment (return 1.0) is no episode return
    datasets.pin_to_run(_tiny_dataset(), tmp_path, resuming=True)  # the same data: fine, record kept
    with pytest.raises(RlzooError, match="ref_max_score changed"):
        datasets.pin_to_run(_tiny_dataset(ref_max=120.0), tmp_path, resuming=True)
    with pytest.raises(RlzooError, match="transitions changed"):
        datasets.pin_to_run(_tiny_dataset(n=8), tmp_path, resuming=True)
    rebuilt = _tiny_dataset()
    rebuilt.episode_returns = np.array([3.0, 4.0, 1.0])  # same size and references, other data
    with pytest.raises(RlzooError, match="return_mean changed"):
        datasets.pin_to_run(rebuilt, tmp_path, resuming=True)
    assert (tmp_path / "dataset.json").read_text() == record


def test_commit_is_dirty_for_code_changes_not_for_results(tmp_path):
    """rlzoo.provenance: '+dirty' marks a changed tracked file, except under results/, which runs write."""
    import subprocess

    from rlzoo.provenance import checkout_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "results" / "scores.csv").write_text("a\n")
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = checkout_commit(tmp_path / "pkg")
    assert clean != "unknown" and not clean.endswith("+dirty")
    (tmp_path / "results" / "scores.csv").write_text("a\nb\n")
    assert checkout_commit(tmp_path / "pkg") == clean
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert checkout_commit(tmp_path / "pkg") == clean + "+dirty"


def test_commit_can_be_given_where_the_tree_has_no_git(monkeypatch):
    """A lent GPU machine gets a copy of the tree without .git: RLZOO_COMMIT names the commit it was sent from."""
    from rlzoo import provenance

    provenance.commit.cache_clear()
    monkeypatch.setenv("RLZOO_COMMIT", "abc1234")
    try:
        assert provenance.commit() == "abc1234"
        assert provenance.info()["commit"] == "abc1234"
    finally:
        provenance.commit.cache_clear()
