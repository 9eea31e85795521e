"""RAVL: EDAC's diversity term by hand, the rollout buffer, the --eta switch, a short run with the edge-of-reach
diagnostic, kill-and-resume, and bad options. Tiny networks, model and rollouts, so that each test takes seconds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    PENDULUM_ID,
    assert_clean_failure,
    assert_logs_match,
    cli_env,
    kill_once_checkpointed,
    load_checkpoint,
    resumed_step,
)

from rlzoo import buffers
from rlzoo.errors import RlzooError

REPO = Path(__file__).resolve().parents[1]
RAVL_PY = REPO / "algorithms" / "ravl.py"
from algorithms import ravl  # noqa: E402

# Tiny agent, model and rollouts on the Pendulum controller dataset (3-d observations, 1-d actions, bound 2).
TINY = dict(env=PENDULUM_ID, max_action=2.0, hidden_dims=(16, 16), num_critics=3, batch_size=32, rollout_batch=32,
            rollout_length=3, rollout_every=50, rollout_retain_epochs=2, diagnostic_samples=256, termination="never",
            dynamics_members=2, dynamics_elites=1, dynamics_hidden_dims=(16, 16), dynamics_weight_decay=(0.0,) * 3,
            dynamics_max_epochs=3, eval_episodes=1, quiet=True)
TINY_ARGS = [arg for key, value in TINY.items() if key != "quiet"
             for arg in ["--" + key.replace("_", "-"), *map(str, value if isinstance(value, tuple) else (value,))]]
TINY_ARGS += ["--quiet"]
REACH = ("q_edge_of_reach", "q_in_reach", "q_std_edge_of_reach", "q_std_in_reach")


def run_ravl(args: list[str], env: dict, timeout: float = 300):
    return subprocess.run([sys.executable, str(RAVL_PY), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------- the math


def linear_ensemble(action_weights: list[list[float]], obs_dim: int = 2):
    """An ensemble of linear critics Q_i(s, a) = w_s . s + w_i . a + b (no hidden layer), with grad_a Q_i = w_i."""
    n, act_dim = len(action_weights), len(action_weights[0])
    _, critic, per_member = ravl.make_networks(ravl.Config(num_critics=n, hidden_dims=()), act_dim)
    params = critic.init(jax.random.PRNGKey(0), jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)))
    dense = params["params"]["VmapCritic_0"]["MLP_0"]["Dense_0"]
    assert dense["kernel"].shape == (n, obs_dim + act_dim, 1)
    kernel = dense["kernel"].at[:, obs_dim:, 0].set(jnp.asarray(action_weights, jnp.float32))
    params = {"params": {"VmapCritic_0": {"MLP_0": {"Dense_0": {**dense, "kernel": kernel}}}}}
    return critic, per_member, params


def test_diversity_term_equals_a_hand_computation_on_three_linear_critics():
    """grad_a Q_i = w_i: (1, 0), (0, 1), (1, 1) have pairwise cosines 0, 1/sqrt2, 1/sqrt2; summed over i != j in both
    orders that is 2 sqrt2, divided by N - 1 = 2: sqrt2, whatever the states and actions."""
    critic, per_member, params = linear_ensemble([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    k_obs, k_act = jax.random.split(jax.random.PRNGKey(1))
    obs, act = jax.random.normal(k_obs, (7, 2)), jax.random.uniform(k_act, (7, 2), minval=-1, maxval=1)
    value = ravl.diversity_loss(per_member.apply, params, obs, act)
    np.testing.assert_allclose(float(value), np.sqrt(2.0), rtol=1e-6)
    # the per-member ensemble shares the critics' parameters: at a shared action it is the critic ensemble
    np.testing.assert_array_equal(per_member.apply(params, obs, jnp.broadcast_to(act, (3, 7, 2))),
                                  critic.apply(params, obs, act))

    # Parallel gradients (2, 0) and (3, 0) have cosine 1, a zero gradient cosine 0 with both: 2 * 1 / 2 = 1; the
    # zero member's norm gets a zero gradient, not NaN, as torch's.
    _, per_member, params = linear_ensemble([[2.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(float(ravl.diversity_loss(per_member.apply, params, obs, act)), 1.0, rtol=1e-6)
    grads = jax.grad(lambda p: ravl.diversity_loss(per_member.apply, p, obs, act))(params)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_masked_add_keeps_only_real_rollout_steps_in_fifo_order():
    buffer = buffers.replay_init({"x": jnp.float32(0)}, 5)
    buffer = buffers.replay_add(buffer, {"x": jnp.arange(1.0, 5.0)}, jnp.array([True, False, True, False]))
    assert int(buffer.size) == 2 and int(buffer.ptr) == 2
    np.testing.assert_array_equal(buffer.data["x"], [1, 3, 0, 0, 0])
    buffer = buffers.replay_add(buffer, {"x": jnp.arange(5.0, 9.0)}, jnp.array([True, True, False, True]))
    assert int(buffer.size) == 5 and int(buffer.ptr) == 0
    np.testing.assert_array_equal(buffer.data["x"], [1, 3, 5, 6, 8])
    buffer = buffers.replay_add(buffer, {"x": jnp.array([9.0, 10.0])}, jnp.array([False, True]))  # oldest goes
    assert int(buffer.size) == 5 and int(buffer.ptr) == 1
    np.testing.assert_array_equal(buffer.data["x"], [10, 3, 5, 6, 8])


def test_eta_zero_switches_off_only_the_diversity_gradient():
    """The same update from the same state with --eta 1 and --eta 0: temperature and actor (updated before the
    critics) agree, the logged similarity and TD loss agree, the critics differ by the diversity term's gradient."""
    obs_dim, act_dim, n = 3, 2, 32
    base = ravl.Config(hidden_dims=(16, 16), num_critics=3, max_action=2.0)
    k = jax.random.split(jax.random.PRNGKey(2), 6)
    batch = {"observations": jax.random.normal(k[0], (n, obs_dim)),
             "actions": jax.random.uniform(k[1], (n, act_dim), minval=-2.0, maxval=2.0),
             "rewards": jax.random.normal(k[2], (n,)), "next_observations": jax.random.normal(k[3], (n, obs_dim)),
             "dones": (jax.random.uniform(k[4], (n,)) < 0.2).astype(jnp.float32)}
    state = ravl.init_state(dataclasses.replace(base, rollout_batch=4), k[5], obs_dim, act_dim)
    on, m_on = jax.jit(ravl.make_update(base, act_dim))(state, batch)
    off, m_off = jax.jit(ravl.make_update(dataclasses.replace(base, eta=0.0), act_dim))(state, batch)
    for name in ("actor", "log_alpha"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, on[name].params, off[name].params)
    for name in ("critic_loss", "grad_similarity", "actor_loss", "alpha"):
        np.testing.assert_allclose(float(m_on[name]), float(m_off[name]), rtol=1e-6)
    assert 0 < float(m_on["grad_similarity"]) <= 3.0
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), on["critic"].params, off["critic"].params)
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-6


# ---------------------------------------------------------------------------------------------- runs


def test_short_run_trains_and_logs_the_edge_of_reach_diagnostic(pendulum_store, monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    config = ravl.Config(**TINY, num_seeds=2, total_steps=200, chunk=100, eval_every=200, checkpoint_every=200,
                         run_dir=str(tmp_path / "run"))
    summary = ravl.main(config)
    assert summary["steps"] == 200 and all(np.isfinite(summary["final_scores"][s]) for s in (0, 1))
    train = np.atleast_1d(np.genfromtxt(tmp_path / "run" / "train.csv", delimiter=",", names=True))
    assert list(train["step"]) == [100, 100, 200, 200] and list(train["seed"]) == [0, 1, 0, 1]
    for name in (*REACH, "critic_loss", "grad_similarity", "rollout_steps", "rollout_reward"):
        assert np.isfinite(train[name]).all(), name
    assert (train["q_std_edge_of_reach"] > 0).all() and (train["q_std_in_reach"] > 0).all()
    assert (train["rollout_steps"] == 3).all()  # Pendulum never terminates: every rollout runs its 3 steps
    state, _ = load_checkpoint(tmp_path / "run")
    # 2 epochs per chunk x 2 chunks of 32 rollouts x 3 steps fill each seed's buffer of 2 epochs (192 rows); a
    # third of its rows are last steps, whose next states are at the edge of reach; the seeds roll out apart
    assert state["['rollouts']['size']"].tolist() == [192, 192]
    assert state["['rollouts']['data']['last']"].mean() == pytest.approx(1 / 3)
    rows = state["['rollouts']['data']['next_observations']"]
    assert not np.array_equal(rows[0], rows[1])


def test_kill_and_resume_is_bit_exact(pendulum_store, jax_cache_dir, tmp_path):
    env = cli_env(jax_cache_dir, pendulum_store)
    args = TINY_ARGS + ["--total-steps", "1000", "--chunk", "100", "--checkpoint-every", "100", "--eval-every", "500"]
    full = run_ravl(args + ["--run-dir", str(tmp_path / "full")], env)
    assert full.returncode == 0, full.stderr[-4000:]

    run_dir = tmp_path / "killed"
    killed_at = kill_once_checkpointed([sys.executable, str(RAVL_PY), *args, "--run-dir", str(run_dir)], run_dir,
                                       300, env, REPO)
    assert 300 <= max(killed_at) < 1000, killed_at
    resumed = run_ravl(["--resume", str(run_dir), "--quiet"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed_step(resumed.stdout) >= max(killed_at) - 100
    assert "dynamics: reusing the model" in resumed.stdout

    state_full, meta_full = load_checkpoint(tmp_path / "full")
    state_resumed, meta_resumed = load_checkpoint(run_dir)
    assert meta_full["step"] == meta_resumed["step"] == 1000
    assert state_full.keys() == state_resumed.keys() and any("rollouts" in k for k in state_full)
    for name in state_full:  # the rollout buffer included
        np.testing.assert_array_equal(state_full[name], state_resumed[name], err_msg=name)
    assert_logs_match(run_dir, tmp_path / "full")
    assert json.loads((run_dir / "summary.json").read_text())["final_scores"] == \
        json.loads((tmp_path / "full" / "summary.json").read_text())["final_scores"]


# ---------------------------------------------------------------------------------------------- bad options


def test_bad_options_get_one_paragraph_and_leave_no_run_directory(pendulum_store, jax_cache_dir, monkeypatch,
                                                                    tmp_path):
    proc = run_ravl(TINY_ARGS + ["--total-steps", "150", "--chunk", "75", "--eval-every", "150", "--checkpoint-every",
                                 "150", "--run-dir", str(tmp_path / "cli")], cli_env(jax_cache_dir, pendulum_store),
                    timeout=120)
    assert_clean_failure(proc, "--chunk 75 must be a multiple of --rollout-every 50")
    assert not (tmp_path / "cli").exists()

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    base = ravl.Config(**TINY, total_steps=100, chunk=100, eval_every=100, checkpoint_every=100)
    refused = {
        "termination": (dict(termination="auto"), "--termination auto finds no termination function"),
        "eta": (dict(num_critics=1), "--eta 1.0 needs --num-critics 2 or more"),
        "range": (dict(real_ratio=1.5), "--real-ratio 1.5: must be in [0, 1]"),
        "dynamics": (dict(dynamics_elites=3), "the dynamics options (--dynamics-*): num_elites 3 exceeds"),
    }
    for name, (change, says) in refused.items():
        with pytest.raises(RlzooError) as err:
            ravl.main(dataclasses.replace(base, **change, run_dir=str(tmp_path / name)))
        assert says in str(err.value), str(err.value)
        assert not (tmp_path / name).exists()
