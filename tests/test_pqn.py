"""PQN: Q(lambda) targets, LayerNorm network, learning on MinAtar, the Atari wrapper, seeds, resume, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    assert_clean_failure,
    assert_logs_match,
    cli_env,
    kill_once_checkpointed,
    load_checkpoint,
    resumed_step,
)

from rlzoo.checkpoint import load_params

# gymnax's MinAtar writes ints into bool planes, which jax 0.10 warns about at every trace.
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
PQN_PY = REPO / "algorithms" / "pqn.py"
from algorithms import pqn, pqn_atari  # noqa: E402

# A tiny MinAtar run: 16 envs x 8 steps per rollout, 4 rollouts per chunk.
TINY = [
    "--env",
    "Breakout-MinAtar",
    "--num-envs",
    "16",
    "--num-steps",
    "8",
    "--num-minibatches",
    "4",
    "--chunk",
    "512",
    "--eval-every",
    "1024",
    "--checkpoint-every",
    "512",
    "--eval-episodes",
    "4",
    "--quiet",
]


def run_pqn(args: list[str], env: dict, script: Path = PQN_PY, cwd: Path = REPO, timeout: float = 300):
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def reference_q_lambda(rewards, dones, next_q, gamma, lam):
    """Plain-Python Q(lambda): G_t = r_t + gamma (1 - d_t) [(1 - lam) q_{t+1} + lam G_{t+1}], G_T = q_T."""
    horizon, n = rewards.shape
    out = np.zeros((horizon, n))
    for i in range(n):
        g = next_q[-1, i]
        for t in reversed(range(horizon)):
            if dones[t, i]:
                g = rewards[t, i]
            else:
                g = rewards[t, i] + gamma * ((1 - lam) * next_q[t, i] + lam * g)
            out[t, i] = g
    return out


def test_q_lambda_returns_match_python_reference():
    rng = np.random.default_rng(0)
    horizon, n = 17, 5
    rewards = rng.normal(size=(horizon, n)).astype(np.float32)
    dones = rng.uniform(size=(horizon, n)) < 0.2
    dones[-1, 0], dones[:, 1] = True, False  # an episode ending on the last step; one env with no ending
    next_q = rng.normal(size=(horizon, n)).astype(np.float32)
    got = pqn.q_lambda_returns(jnp.asarray(rewards), jnp.asarray(dones, jnp.float32), jnp.asarray(next_q), 0.99, 0.65)
    want = reference_q_lambda(rewards, dones, next_q, 0.99, 0.65)
    assert dones.sum() > 5
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # lambda = 0 is one-step Q-learning; lambda = 1 with no ending is the discounted sum bootstrapped at the end
    d = jnp.asarray(dones, jnp.float32)
    one_step = pqn.q_lambda_returns(jnp.asarray(rewards), d, jnp.asarray(next_q), 0.9, 0.0)
    np.testing.assert_allclose(np.asarray(one_step), rewards + 0.9 * (1 - dones) * next_q, rtol=1e-5, atol=1e-5)
    full = pqn.q_lambda_returns(jnp.asarray(rewards), jnp.zeros((horizon, n)), jnp.asarray(next_q), 0.9, 1.0)
    discounted = sum(0.9**t * rewards[t] for t in range(horizon)) + 0.9**horizon * next_q[-1]
    np.testing.assert_allclose(np.asarray(full)[0], discounted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,obs_shape,layers", [("minatar", (10, 10, 4), 2), ("atari", (4, 84, 84), 4)])
def test_network_has_layernorm_after_every_hidden_layer(backend, obs_shape, layers):
    network = pqn.make_network(6) if backend == "minatar" else pqn_atari.make_network(6)
    params = jax.jit(network.init)(jax.random.PRNGKey(0), jnp.zeros((1, *obs_shape)))["params"]
    norms = sorted(k for k in params if k.startswith("LayerNorm"))
    hidden = sorted(k for k in params if k.startswith(("PatchConv", "Dense")))
    assert len(norms) == layers and len(hidden) == layers + 1  # + the linear output layer
    out = f"Dense_{sum(k.startswith('Dense') for k in hidden) - 1}"
    assert params[out]["bias"].shape == (6,)
    widths = sorted(params[k]["bias"].shape[0] for k in hidden if k != out)
    assert sorted(params[k]["scale"].shape[0] for k in norms) == widths
    obs = jnp.zeros((3, *obs_shape), jnp.uint8 if backend == "atari" else jnp.float32)
    q = jax.jit(network.apply)({"params": params}, obs)
    assert q.shape == (3, 6)


def test_minatar_obs_div_255_scales_the_input_only():
    """The reference code's division of MinAtar's 0/1 planes by 255, kept as an option for comparing with it."""
    obs = (jax.random.uniform(jax.random.PRNGKey(1), (3, 10, 10, 4)) < 0.2).astype(jnp.float32)
    plain, divided = pqn.make_network(6), pqn.make_network(6, obs_div_255=True)
    params = plain.init(jax.random.PRNGKey(0), obs)
    np.testing.assert_array_equal(divided.apply(params, obs), plain.apply(params, obs / 255))
    assert not np.allclose(divided.apply(params, obs), plain.apply(params, obs))


def test_patch_conv_equals_flax_conv():
    import flax.linen as nn

    from rlzoo.networks import PatchConv

    for shape, kernel, stride in [((2, 10, 10, 4), 3, 1), ((2, 22, 22, 4), 8, 4)]:
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        ours = PatchConv(16, (kernel, kernel), (stride, stride))
        params = jax.jit(ours.init)(jax.random.PRNGKey(1), x)
        ref = nn.Conv(16, (kernel, kernel), (stride, stride), padding="VALID")
        np.testing.assert_allclose(jax.jit(ours.apply)(params, x), jax.jit(ref.apply)(params, x), rtol=1e-5, atol=1e-5)
        grad = jax.jit(jax.grad(lambda p, m, x: (m.apply(p, x) ** 2).sum()), static_argnums=1)
        for a, b in zip(
            jax.tree_util.tree_leaves(grad(params, ours, x)), jax.tree_util.tree_leaves(grad(params, ref, x))
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def random_policy_return(env_id: str, episodes: int = 64) -> float:
    """Mean return of uniformly random actions over `episodes` gymnax episodes."""
    import gymnax

    env, params = gymnax.make(env_id)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def run(key):
        obs, state = reset(jax.random.split(key, episodes), params)

        def body(carry, key):
            state, ret, running = carry
            k_a, k_s = jax.random.split(key)
            action = jax.random.randint(k_a, (episodes,), 0, env.num_actions)
            _, state, r, done, _ = step(jax.random.split(k_s, episodes), state, action, params)
            return (state, ret + r * running, running & ~done), None

        carry = (state, jnp.zeros(episodes), jnp.ones(episodes, bool))
        return jax.lax.scan(body, carry, jax.random.split(key, params.max_steps_in_episode))[0][1]

    return float(run(jax.random.PRNGKey(123)).mean())


def test_minatar_learns_breakout(tmp_path):
    """Measured on the project's 2-core CPU: 32 envs x 32 steps, 65,536 env steps (with the schedules
    compressed to that length); three seeds reached 4.0, 6.6 and 4.6 (32 greedy episodes each) against a
    random policy's ~0.6."""
    random_return = random_policy_return("Breakout-MinAtar")
    config = pqn.Config(
        env="Breakout-MinAtar",
        num_seeds=2,
        num_envs=32,
        num_minibatches=8,
        total_steps=65_536,
        chunk=16_384,
        eval_every=16_384,
        checkpoint_every=65_536,
        eval_episodes=32,
        run_dir=str(tmp_path / "run"),
        quiet=True,
    )
    summary = pqn.main(config)
    evals = np.atleast_1d(np.genfromtxt(tmp_path / "run" / "eval.csv", delimiter=",", names=True))
    final = evals["return_mean"][evals["step"] == 65_536]
    print(f"random {random_return:.2f}; evals {evals['return_mean']}")
    assert random_return < 1.5
    assert (final > random_return + 2.0).all(), final  # every seed
    assert summary["final_scores"] == {0: pytest.approx(final[0]), 1: pytest.approx(final[1])}
    train = np.atleast_1d(np.genfromtxt(tmp_path / "run" / "train.csv", delimiter=",", names=True))
    assert np.isfinite(train["loss"]).all() and train["epsilon"][-1] == pytest.approx(0.05)


def test_atari_wrapper_shapes_clipping_and_raw_score():
    from rlzoo.atari import AtariEnvs, atari_game, atari_signals

    assert atari_game("ALE/SpaceInvaders-v5") == atari_game("SpaceInvaders") == "space_invaders"
    assert atari_game("Breakout-MinAtar") is None
    # The signals: clipping, a lost life ends the learning episode, the reset step after a game end is invalid.
    reward = np.array([5.0, -3.0, 0.0, 2.0, 1.0])
    terminated = np.array([False, False, False, True, False])
    lives = np.array([3, 2, 3, 0, 5])
    prev_lives = np.array([3, 3, 3, 1, 1])
    prev_over = np.array([False, False, False, False, True])
    no = np.zeros(5, bool)
    r, done, valid, over = atari_signals(reward, terminated, no, lives, prev_lives, prev_over, True, True)
    np.testing.assert_array_equal(r, [1, -1, 0, 1, 1])
    np.testing.assert_array_equal(done, [False, True, False, True, False])
    np.testing.assert_array_equal(valid, [True, True, True, True, False])
    np.testing.assert_array_equal(over, [False, False, False, True, False])
    r, done, *_ = atari_signals(reward, terminated, no, lives, prev_lives, prev_over, False, False)
    np.testing.assert_array_equal(r, reward)
    np.testing.assert_array_equal(done, [False, False, False, True, False])

    # The real env: documented observations; training rewards clipped while the raw score is kept.
    envs = AtariEnvs("space_invaders", 4, 0, clip_rewards=True, episodic_life=True)
    obs = envs.reset()
    assert obs.shape == (4, 4, 84, 84) and obs.dtype == np.uint8 and envs.num_actions == 6
    rng = np.random.default_rng(0)
    train_rewards, raw_rewards = [], []
    for _ in range(300):
        obs, train_r, done, valid, raw, over = envs.step(rng.integers(0, 6, 4))
        train_rewards.append(train_r), raw_rewards.append(raw)
    envs.close()
    train_rewards, raw_rewards = np.concatenate(train_rewards), np.concatenate(raw_rewards)
    assert obs.shape == (4, 4, 84, 84)
    assert set(np.unique(train_rewards)) <= {-1.0, 0.0, 1.0} and raw_rewards.max() >= 5  # an alien is 5-30 points
    np.testing.assert_array_equal(train_rewards, np.sign(raw_rewards))

    # Evaluation reports the raw score (multiples of 5 in Space Invaders), not the clipped count.
    config = pqn_atari.Config(env="SpaceInvaders", eval_episodes=2, eval_max_steps=400)
    network = pqn_atari.make_network(6)
    init = jax.jit(jax.vmap(lambda k: network.init(k, jnp.zeros((1, 4, 84, 84)))))
    params = init(jax.random.split(jax.random.PRNGKey(0), 1))
    evaluate, eval_envs = pqn_atari.atari_evaluator(config, "space_invaders", network, [0], 0)
    assert not eval_envs.clip_rewards and not eval_envs.episodic_life
    recorded, step = [], eval_envs.step

    def recording_step(actions):  # what the env returned at every step: raw reward and game over
        out = step(actions)
        recorded.append((out[4].copy(), out[5].copy()))
        return out

    eval_envs.step = recording_step
    returns = evaluate(params)
    eval_envs.close()
    assert returns.shape == (1, 2)
    raw, over = (np.stack(x) for x in zip(*recorded))
    counted = np.cumprod(np.vstack([np.ones((1, 2), bool), ~over[:-1]]), axis=0).astype(bool)  # until game over
    np.testing.assert_array_equal(returns[0], (raw * counted).sum(0))  # the game's points, summed
    assert (np.sign(raw) * counted).sum(0).max() < returns.max(), returns  # not a count of clipped rewards


def test_each_file_has_its_papers_table_and_refuses_the_others_games(jax_cache_dir, tmp_path):
    """pqn_atari.py defaults to the paper's Atari table, pqn.py to its MinAtar table; each file sends the other's
    games to the right file in one paragraph."""
    atari, minatar = pqn_atari.Config(), pqn.Config()
    assert atari.lr == 2.5e-4 and not atari.lr_linear_decay and atari.eps_finish == 0.001
    assert minatar.lr == 5e-4 and minatar.lr_linear_decay and minatar.eps_finish == 0.05
    assert pqn_atari.check_config(pqn_atari.Config(env="Pong")) == pqn_atari.check_config(
        pqn_atari.Config(env="ALE/Pong-v5")) == "pong"
    proc = run_pqn(["--env", "Pong", "--run-dir", str(tmp_path / "a")], cli_env(jax_cache_dir), timeout=120)
    assert_clean_failure(proc, "unknown environment 'Pong'", "algorithms/pqn_atari.py")
    proc = run_pqn(["--env", "Breakout-MinAtar", "--run-dir", str(tmp_path / "b")], cli_env(jax_cache_dir),
                   script=REPO / "algorithms" / "pqn_atari.py", timeout=120)
    assert_clean_failure(proc, "unknown Atari game 'Breakout-MinAtar'", "algorithms/pqn.py")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_atari_xla_and_host_stepping_agree(tmp_path, capsys):
    """The env inside the jit (ale-py's XLA interface, the default) and stepped from the host give the same run; an
    evaluation game cut by --eval-max-steps (50 agent steps cannot finish five lives of Breakout) is reported as
    partial by each. PQN's only Atari training test, so it stays in CI (about 30 s for both runs)."""
    common = dict(
        env="Breakout",
        num_envs=4,
        num_steps=8,
        num_minibatches=2,
        total_steps=256,
        chunk=128,
        eval_every=256,
        checkpoint_every=256,
        eval_episodes=1,
        eval_max_steps=50,
        quiet=True,
    )
    rows = []
    for xla in (True, False):
        summary = pqn_atari.main(pqn_atari.Config(**common, atari_xla=xla, run_dir=str(tmp_path / f"xla{xla}")))
        assert load_checkpoint(tmp_path / f"xla{xla}")[1]["step"] == 256
        assert summary["algorithm"] == "pqn" and (tmp_path / f"xla{xla}" / "policy.npz").exists()
        assert "1 of 1 games were still going after --eval-max-steps 50 agent steps" in capsys.readouterr().out, xla
        rows.append((tmp_path / f"xla{xla}" / "train.csv").read_text())
    assert rows[0] == rows[1]
    assert rows[0].count("\n") == 3
    train = np.genfromtxt(tmp_path / "xlaTrue" / "train.csv", delimiter=",", names=True)
    assert all(np.isfinite(train[name]).all() for name in train.dtype.names)


def test_unknown_env_is_one_paragraph(jax_cache_dir, tmp_path):
    proc = run_pqn(
        ["--env", "Breakout-Minatar", "--run-dir", str(tmp_path / "run")], cli_env(jax_cache_dir), timeout=120
    )
    message = assert_clean_failure(proc, "unknown environment 'Breakout-Minatar'")
    assert "Breakout-MinAtar" in message.split("Close matches:")[1]
    assert not (tmp_path / "run").exists()


def test_copied_file_two_seeds_distinct_and_reproducible(jax_cache_dir, tmp_path):
    """`cp algorithms/pqn.py` elsewhere and run it with --num-seeds 2: the two seeds differ, a rerun is equal."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    script = Path(shutil.copy(PQN_PY, workdir / "pqn.py"))
    params = []
    for name in ("a", "b"):
        proc = run_pqn(
            TINY + ["--num-seeds", "2", "--total-steps", "1024", "--run-dir", str(workdir / name)],
            cli_env(jax_cache_dir),
            script=script,
            cwd=workdir,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        params.append(jax.tree_util.tree_leaves(load_params(workdir / name / "policy.npz")[0]))
    for a, b in zip(*params, strict=True):
        np.testing.assert_array_equal(a, b)  # same seeds, same numbers
        assert a.shape[0] == 2
    assert any(not np.array_equal(leaf[0], leaf[1]) for leaf in params[0])  # seed 0 != seed 1
    assert (workdir / "a" / "eval.csv").read_text() == (workdir / "b" / "eval.csv").read_text()


def test_kill_and_resume_is_bit_exact(jax_cache_dir, tmp_path):
    """The MinAtar envs live in the device state, so a resumed run continues exactly."""
    env = cli_env(jax_cache_dir)
    args = TINY + ["--total-steps", "4096"]
    full = run_pqn(args + ["--run-dir", str(tmp_path / "full")], env)
    assert full.returncode == 0, full.stderr[-4000:]
    run_dir = tmp_path / "killed"
    killed_at = kill_once_checkpointed(
        [sys.executable, str(PQN_PY), *args, "--run-dir", str(run_dir)], run_dir, 1024, env, REPO
    )
    assert 1024 <= max(killed_at) < 4096, killed_at
    resumed = run_pqn(["--resume", str(run_dir), "--quiet"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed_step(resumed.stdout) >= 1024
    state_full, meta_full = load_checkpoint(tmp_path / "full")
    state_resumed, meta_resumed = load_checkpoint(run_dir)
    assert state_full.keys() == state_resumed.keys()
    for k in state_full:  # network, optimizer, RNG, env states and observations
        np.testing.assert_array_equal(state_full[k], state_resumed[k], err_msg=k)
    drop_wall = lambda meta: {k: v for k, v in meta.items() if k != "wall_s"}  # training time differs, rightly
    assert drop_wall(meta_full) == drop_wall(meta_resumed)
    assert_logs_match(run_dir, tmp_path / "full")


def test_nan_loss_is_dated_in_env_steps(tmp_path):
    """PQN logs one metric entry per rollout (4096 env steps by default): a NaN in the 3rd rollout of the
    second chunk is reported at the env step that rollout ends on, not at a rollout index."""
    from rlzoo.errors import NonFiniteLossError
    from rlzoo.options import RunConfig
    from rlzoo.run import Run

    config = RunConfig(
        env="fake",
        num_seeds=1,
        total_steps=40_960,
        chunk=20_480,
        eval_every=20_480,
        checkpoint_every=20_480,
        run_dir=str(tmp_path / "run"),
        quiet=True,
    )
    run = Run.start(config, "fake")
    calls = []

    def chunk(state):
        calls.append(1)
        loss = np.ones((1, 5), np.float32)  # 5 rollouts of 4096 env steps per chunk
        if len(calls) == 2:
            loss[0, 2] = np.nan
        return state, {"loss": loss, "episode_return": np.zeros((1, 5), np.float32)}

    with pytest.raises(NonFiniteLossError, match=r"at step 32768 \(seed 0\)"):
        run.train({"w": jnp.zeros((1, 2))}, chunk, lambda s: (np.zeros((1, 1)), np.zeros(1)), "return")
    run.checkpointer.close()
