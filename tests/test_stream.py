"""stream-x: ObGD against a hand computation, traces, sparse init, parameter-free LayerNorm, streaming
normalizers against batch statistics; stream AC / Q / TD learn on small tasks, refuse bad input, resume exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    assert_clean_failure,
    assert_logs_match,
    cli_env,
    kill_once_checkpointed,
    load_checkpoint,
    resumed_step,
)

from rlzoo import normalizers as norm
from rlzoo.networks import MLP, QNetwork, free_layer_norm, sparse_init
from rlzoo.optim import obgd

REPO = Path(__file__).resolve().parents[1]
ALGOS = REPO / "algorithms"


def run_algo(name: str, args: list[str], env: dict, timeout: float = 300):
    return subprocess.run([sys.executable, str(ALGOS / f"{name}.py"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def eval_scores(run_dir: Path) -> np.ndarray:
    data = np.genfromtxt(run_dir / "eval.csv", delimiter=",", names=True)
    return np.asarray(data["score"])


# ---- ObGD -------------------------------------------------------------------------------------------------

def _linear_grads(w, b, x):
    """Gradient of -f for f(x) = w.x + b (the negated prediction ObGD's traces hold)."""
    return {"w": -x, "b": -jnp.ones_like(b)}


@pytest.mark.parametrize("x, delta, clipped", [
    (np.array([0.05, -0.02, 0.01]), 0.3, False),  # lr 0.1: M = 0.1 x 2 x max(0.3, 1) x (0.08 + 1) = 0.216
    (np.array([0.5, -2.0, 1.0]), -1.7, True),  # lr 1: M = 2 x 1.7 x 4.5 = 15.3, the step is cut to 1 / M
])
def test_obgd_step_equals_hand_computation(x, delta, clipped):
    """One ObGD step on a linear model, with the overshooting bound inactive (small lr) and active (lr 1)."""
    lr, gamma, lam, kappa = (0.1, 0.9, 0.5, 2.0) if not clipped else (1.0, 0.9, 0.5, 2.0)
    params = {"w": jnp.array([0.2, -0.1, 0.4]), "b": jnp.array(0.3)}
    tx = obgd(lr, gamma, lam, kappa)
    state = tx.init(params)
    grads = _linear_grads(params["w"], params["b"], jnp.asarray(x))
    updates, state = tx.update(grads, state, delta=jnp.float32(delta))
    new = optax.apply_updates(params, updates)

    e_w, e_b = -x, -1.0  # traces start at 0: e = grad
    m = lr * kappa * max(abs(delta), 1.0) * (np.abs(e_w).sum() + abs(e_b))
    step = lr / m if m > 1 else lr
    assert (m > 1) == clipped
    np.testing.assert_allclose(new["w"], np.array([0.2, -0.1, 0.4]) - step * delta * e_w, rtol=1e-6)
    np.testing.assert_allclose(new["b"], 0.3 - step * delta * e_b, rtol=1e-6)
    np.testing.assert_allclose(state.step_size, step, rtol=1e-6)
    # the step moves the prediction toward its target f + delta without overshooting it
    change = float(new["w"] @ x + new["b"]) - float(params["w"] @ x + params["b"])
    assert np.sign(change) == np.sign(delta) and abs(change) < abs(delta)


def test_obgd_traces_decay_and_reset():
    params = {"w": jnp.zeros(2)}
    tx = obgd(1e-3, gamma=0.9, lam=0.5, kappa=2.0)
    state = tx.init(params)
    g1, g2 = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([-0.5, 0.25])}
    _, state = tx.update(g1, state, delta=0.1)
    np.testing.assert_allclose(state.trace["w"], [1.0, 2.0])
    _, state = tx.update(g2, state, delta=0.1)
    np.testing.assert_allclose(state.trace["w"], 0.45 * np.array([1.0, 2.0]) + np.array([-0.5, 0.25]), rtol=1e-6)
    updates, state = tx.update(g2, state, delta=0.1, reset=True)
    assert np.all(np.asarray(state.trace["w"]) == 0)  # cleared after the step ...
    assert np.any(np.asarray(updates["w"]) != 0)  # ... which still used the trace


# ---- networks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 16), (3, 3, 4, 8)])
def test_sparse_init_zeroes_the_fraction_of_every_unit(shape):
    w = np.asarray(sparse_init(0.9)(jax.random.key(0), shape))
    fan_in = int(np.prod(shape[:-1]))
    per_unit = (w.reshape(fan_in, shape[-1]) == 0).sum(0)
    assert np.all(per_unit == int(np.ceil(0.9 * fan_in)))
    assert np.abs(w).max() <= 1 / np.sqrt(fan_in)
    assert np.asarray(sparse_init(0.9)(jax.random.key(1), shape)).tolist() != w.tolist()


def test_stream_networks_layer_norm_has_no_parameters():
    mlp = MLP((32, 32), 1, kernel_init=sparse_init(0.9), layer_norm=True, activation=nn.leaky_relu)
    params = mlp.init(jax.random.key(0), jnp.zeros(5))
    assert set(params["params"]) == {"Dense_0", "Dense_1", "Dense_2"}
    q = QNetwork(3, convs=((16, 3, 1),), hidden=(32,), sparse=0.9, activation=nn.leaky_relu)
    q_params = q.init(jax.random.key(0), jnp.zeros((10, 10, 4)))
    assert not any("LayerNorm" in k for k in q_params["params"])
    x = jax.random.normal(jax.random.key(2), (4, 6, 7)) * 3 + 1
    y = free_layer_norm(x, (-3, -2, -1))
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-3


# ---- normalizers ------------------------------------------------------------------------------------------

def test_streaming_normalizers_match_batch_statistics():
    rng = np.random.default_rng(0)
    xs = rng.normal([3.0, -2.0], [5.0, 0.1], size=(5000, 2)).astype(np.float32)
    stats = norm.mean_var_init((2,))
    stats, first = norm.obs_normalize(stats, jnp.asarray(xs[0]))
    np.testing.assert_allclose(first, 0.0, atol=1e-6)  # variance 1 and mean = the sample until two are seen
    update = jax.jit(norm.mean_var_update)
    for x in xs[1:]:
        stats = update(stats, jnp.asarray(x))
    np.testing.assert_allclose(stats.mean, xs.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(norm.variance(stats), xs.var(0, ddof=1), rtol=1e-3)

    rewards = rng.normal(1.0, 2.0, size=3000).astype(np.float32)
    ends = np.zeros(3000, bool)
    ends[::700] = True
    state, g, trace = norm.reward_scale_init(), 0.0, []
    scale = jax.jit(lambda s, r, e: norm.reward_scale(s, r, e, 0.99))
    for r, e in zip(rewards, ends):
        state, scaled = scale(state, jnp.float32(r), jnp.bool_(e))
        g = g * 0.99 * (1 - e) + r
        trace.append(g)
    np.testing.assert_allclose(state.ret, g, rtol=1e-4)
    np.testing.assert_allclose(float(scaled), rewards[-1] / np.std(trace, ddof=1), rtol=1e-3)
    np.testing.assert_allclose(norm.time_feature(jnp.float32(250)), -0.25)


# ---- algorithms -------------------------------------------------------------------------------------------

def test_stream_ac_beats_random_on_inverted_pendulum(jax_cache_dir, tmp_path):
    """A random policy keeps the pole up for ~5-10 steps; measured: returns of 800-1000 by 8k steps."""
    run_dir = tmp_path / "ac"
    proc = run_algo("stream_ac", ["--env", "InvertedPendulum-v5", "--num-seeds", "2", "--total-steps", "10000",
                                  "--chunk", "1000", "--eval-every", "2000", "--checkpoint-every", "10000",
                                  "--run-dir", str(run_dir), "--quiet"], cli_env(jax_cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = eval_scores(run_dir).reshape(-1, 2)
    assert scores[0].max() < 60  # the first 2k steps: near random
    assert scores[-2:].mean() > 100, scores


def test_stream_q_beats_random_on_breakout(jax_cache_dir, tmp_path):
    import gymnax

    env, env_params = gymnax.make("Breakout-MinAtar")

    def random_return(key):
        def body(carry):
            key, state, ret, done = carry
            key, k_a, k_s = jax.random.split(key, 3)
            _, state, r, d, _ = env.step(k_s, state, jax.random.randint(k_a, (), 0, env.num_actions), env_params)
            return key, state, ret + r, d

        _, state = env.reset(key, env_params)
        return jax.lax.while_loop(lambda c: ~c[3], body, (key, state, 0.0, False))[2]

    random_mean = float(jax.jit(jax.vmap(random_return))(jax.random.split(jax.random.key(0), 200)).mean())
    run_dir = tmp_path / "q"
    proc = run_algo("stream_q", ["--total-steps", "60000", "--chunk", "10000", "--eval-every", "20000",
                                 "--checkpoint-every", "60000", "--run-dir", str(run_dir), "--quiet"],
                    cli_env(jax_cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = eval_scores(run_dir)[-1]
    assert final > 3 * random_mean and final > 2.0, (final, random_mean)


def test_stream_q_atari_runs_on_ale(jax_cache_dir, tmp_path):
    """The Atari path: two seeds' games on the host, the paper's network and 5% epsilon decay from TASKS."""
    run_dir = tmp_path / "atari"
    proc = run_algo("stream_q", ["--env", "ALE/Pong-v5", "--num-seeds", "2", "--total-steps", "1000", "--chunk",
                                 "250", "--eval-every", "500", "--checkpoint-every", "1000", "--run-dir",
                                 str(run_dir), "--quiet"], cli_env(jax_cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["eps_decay"] == 0.05 and config["hidden"] == 256
    train = np.genfromtxt(run_dir / "train.csv", delimiter=",", names=True)
    assert np.all(train["abs_td_error"] > 0) and np.all(np.isfinite(train["abs_td_error"]))
    assert train["epsilon"][-1] == pytest.approx(0.01)  # 5% of 1000 steps


def test_stream_td_prediction_error_falls(jax_cache_dir, tmp_path):
    """V of the committed medium Hopper policy: the Monte Carlo RMSE falls by half within 20k steps (measured
    95 -> 30 against a return spread of ~75)."""
    run_dir = tmp_path / "td"
    proc = run_algo("stream_td", ["--env", "Hopper-v5", "--total-steps", "20000", "--chunk", "1000",
                                  "--eval-every", "5000", "--checkpoint-every", "20000", "--run-dir", str(run_dir),
                                  "--quiet"], cli_env(jax_cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rmse = eval_scores(run_dir)
    assert rmse[-1] < 0.5 * rmse[0], rmse


@pytest.mark.parametrize("algo, args, needle", [
    ("stream_q", ["--env", "Breakout-MinAtr"], "unknown environment 'Breakout-MinAtr'"),
    ("stream_q", ["--env", "ALE/Breakout-v9"], "unknown Atari game 'ALE/Breakout-v9'"),
    ("stream_ac", ["--env", "CartPole-v1"], "continuous (Box) action space"),
    ("stream_td", ["--env", "Hopper-v5", "--policy", "nowhere.npz"], "nowhere.npz"),
])
def test_bad_input_is_one_paragraph(jax_cache_dir, tmp_path, algo, args, needle):
    proc = run_algo(algo, [*args, "--run-dir", str(tmp_path / "run")], cli_env(jax_cache_dir), timeout=120)
    assert_clean_failure(proc, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo, args, kill_after", [
    # 300-step chunks against Hopper's early episodes of tens of steps: checkpoints fall mid-episode and mid-trace
    ("stream_ac", ["--env", "Hopper-v5", "--num-seeds", "2", "--total-steps", "2400", "--chunk", "300",
                   "--eval-every", "600", "--checkpoint-every", "300"], 900),
    ("stream_q", ["--env", "Breakout-MinAtar", "--num-seeds", "2", "--total-steps", "6000", "--chunk", "500",
                  "--eval-every", "1000", "--checkpoint-every", "500"], 1500),
])
def test_kill_and_resume_is_bit_exact(jax_cache_dir, tmp_path, algo, args, kill_after):
    env = cli_env(jax_cache_dir)
    full = run_algo(algo, [*args, "--run-dir", str(tmp_path / "full"), "--quiet"], env)
    assert full.returncode == 0, full.stderr[-3000:]
    run_dir = tmp_path / "killed"
    killed = kill_once_checkpointed([sys.executable, str(ALGOS / f"{algo}.py"), *args, "--run-dir", str(run_dir),
                                     "--quiet"], run_dir, kill_after, env, REPO)
    total = int(args[args.index("--total-steps") + 1])
    assert kill_after <= max(killed) < total, killed
    resumed = run_algo(algo, ["--resume", str(run_dir), "--quiet"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed_step(resumed.stdout) >= kill_after
    state_full, meta_full = load_checkpoint(tmp_path / "full")
    state_resumed, meta_resumed = load_checkpoint(run_dir)
    assert state_full.keys() == state_resumed.keys()
    for k in state_full:  # parameters, traces, normalizer statistics, envs, RNG keys
        np.testing.assert_array_equal(state_full[k], state_resumed[k], err_msg=k)
    assert {k: v for k, v in meta_full.items() if k not in ("wall_s", "commits")} == \
        {k: v for k, v in meta_resumed.items() if k not in ("wall_s", "commits")}
    assert_logs_match(run_dir, tmp_path / "full")
    assert json.loads((run_dir / "summary.json").read_text())["final_scores"] == \
        json.loads((tmp_path / "full" / "summary.json").read_text())["final_scores"]
