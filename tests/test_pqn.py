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
    assert_figure,
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


def test_speed_rows_name_their_benchmark_and_unit(jax_cache_dir, tmp_path):
    """benchmarks/speed.py: PQN is timed in env steps/s (env_throughput), an offline update in updates/s."""
    import csv

    out = tmp_path / "speed.csv"
    speed = Path(__file__).parents[1] / "benchmarks" / "speed.py"
    common = ["--repeats", "1", "--matmul-size", "64", "--out", str(out)]
    for args in (["--algorithm", "pqn", "--updates", "1"],
                 ["--algorithm", "iql", "--updates", "5", "--dataset-size", "1000", "--batch-size", "32"]):
        proc = subprocess.run([sys.executable, str(speed), *args, *common], env=cli_env(jax_cache_dir),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [(r["benchmark"], r["algorithm"], r["unit"]) for r in rows] == [
        ("env_throughput", "pqn", "env_steps/s"), ("update_throughput", "iql", "updates/s")]
    assert all(float(r["value"]) > 0 for r in rows)


def test_profile_update_accounts_for_the_matmuls(jax_cache_dir, tmp_path):
    """benchmarks/profile_update.py: one recorded IQL chunk, split per XLA op and update. An IQL update has at least
    its 15 hidden-layer matmuls (forward and backward), the matmuls take the largest share, and the shares sum to 1."""
    import csv

    from conftest import cli_env

    out = tmp_path / "profile.csv"
    script = Path(__file__).parents[1] / "benchmarks" / "profile_update.py"
    args = ["--algorithm", "iql", "--updates", "4", "--dataset-size", "1000", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(script), *args], env=cli_env(jax_cache_dir), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# iql, 1 seed(s), batch 256, 4 updates recorded")
    rows = list(csv.DictReader(lines[1:]))
    matmuls = [r for r in rows if r["kind"].startswith("matmul")]
    assert sum(float(r["calls_per_update"]) for r in matmuls) >= 15
    share = {kind: sum(float(r["share"]) for r in rows if r["kind"] == kind) for kind in {r["kind"] for r in rows}}
    # Each share is rounded to 6 decimals in the CSV, so their sum is within half a unit of that place per row.
    assert sum(share.values()) == pytest.approx(1.0, abs=len(rows) * 5e-7 + 1e-9)
    assert sum(v for k, v in share.items() if k.startswith("matmul")) > max(
        v for k, v in share.items() if not k.startswith("matmul"))
    assert "ops per update" in proc.stdout
    proc = subprocess.run([sys.executable, str(script), "--algorithm", "sac"], env=cli_env(jax_cache_dir),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "sac is not an offline algorithm" in proc.stderr and "Traceback" not in proc.stderr


def minatar_benchmark():
    from rlzoo.run import import_script

    return import_script(REPO / "benchmarks" / "minatar.py", "_test_minatar_benchmark")


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64:UserWarning")  # gymnax's Freeway asks for int64
def test_minatar_test_estimators_count_episodes_as_each_implementation_does():
    """benchmarks/minatar.py estimators: rlzoo's test (first episode per env) and purejaxql's (all episodes
    finished within one step limit) on the same episodes. Breakout's untrained episodes are short, so envs
    finish several; Freeway's are cut at its 2,500-step limit, so both estimators read the same one."""
    import gymnax

    bench = minatar_benchmark()
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    for game, several in (("Breakout-MinAtar", True), ("Freeway-MinAtar", False)):
        env, env_params = gymnax.make(game)
        network = pqn.make_network(env.num_actions)
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
    bench = minatar_benchmark()
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


def test_device_runs_get_their_own_names(tmp_path, monkeypatch):
    """A GPU run of the same settings (minatar.py --tag, named by device_suite.py from JAX's device kind) gets
    its own run folder, curve and figure, and leaves the CPU run's files alone."""
    from rlzoo.run import import_script

    suite = import_script(REPO / "benchmarks" / "device_suite.py", "_test_device_suite")
    assert suite.tag_for("gpu", "NVIDIA H200") == "gpu-h200"
    assert suite.tag_for("gpu", "NVIDIA H100 80GB HBM3") == "gpu-h100"
    assert suite.tag_for("cpu", "cpu") == "cpu"
    bench = minatar_benchmark()
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


def test_device_atari_length_fits_the_time_left_and_the_figure_holds_every_game(tmp_path, monkeypatch):
    """device_suite.py sizes each Atari game to end before the deadline (whole 16384-step chunks, at most
    --atari-steps, none when too little time is left), and atari.py's figure draws every game run with the same
    settings, also those a second process (a game side by side) wrote, but not a run of other settings."""
    from rlzoo.run import import_script

    suite = import_script(REPO / "benchmarks" / "device_suite.py", "_test_device_suite")
    monkeypatch.setattr(suite, "elapsed", lambda: 100.0)
    args = suite.argparse.Namespace(quick=False, deadline_s=400.0, atari_overhead_s=90.0, atari_rate=4500.0,
                                    atari_steps=1_474_560)
    assert suite.atari_steps(args) == 819_200  # (400 - 100 - 25 - 90) s x 4500/s = 832,500 -> 50 chunks
    args.atari_rate = 1e6
    assert suite.atari_steps(args) == 1_474_560
    args.deadline_s = 200.0
    assert suite.atari_steps(args) == 0

    atari = import_script(REPO / "benchmarks" / "atari.py", "_test_atari_benchmark")
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
    bench = minatar_benchmark()
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


def test_flat_adam_ab_writes_both_optimizers_rows(jax_cache_dir, tmp_path):
    """benchmarks/flat_adam.py: the flat program's state really holds fewer arrays (else the script stops), and
    two rows come back, plain Adam's and the flat one's with plain Adam as its baseline and their ratio."""
    import csv

    out = tmp_path / "speed.csv"
    script = Path(__file__).parents[1] / "benchmarks" / "flat_adam.py"
    args = ["--algorithm", "td3_bc", "--updates", "4", "--rounds", "2", "--dataset-size", "1000", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(script), *args], env=cli_env(jax_cache_dir), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain, flat = list(csv.DictReader(out.read_text().splitlines()))
    assert plain["benchmark"] == flat["benchmark"] == "update_throughput_flat_adam"
    assert plain["notes"].startswith("optax.adam per parameter array") and flat["notes"].startswith("optax.flatten")
    assert flat["baseline"] == f"optax.adam={plain['value']}"
    assert float(flat["ratio_to_baseline"]) == pytest.approx(float(flat["value"]) / float(plain["value"]), abs=2e-3)
