"""Value heads (rlzoo.heads): the target distributions, the values they give back, a regression each head learns,
and every value-based algorithm running with each head."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import PENDULUM_ID, assert_clean_failure, cli_env

from algorithms import cql, iql, pqn, sac, td3_bc
from rlzoo import heads, networks
from rlzoo.errors import RlzooError

REPO = Path(__file__).resolve().parents[1]
CLASSIFICATION = ("two_hot", "hl_gauss")


def head(kind: str, **kw) -> heads.ValueHead:
    return heads.ValueHead(kind, **{"num_bins": 51, "v_min": -10.0, "v_max": 10.0, **kw})


# ---------------------------------------------------------------------------------------------- the heads


def test_hl_gauss_probabilities_sum_to_one_and_their_mean_recovers_the_target():
    h = head("hl_gauss")
    y = jnp.linspace(-10.0, 10.0, 2001)
    probs = h.target_probs(y)
    assert probs.shape == (2001, 51) and float(probs.min()) >= 0.0
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    mean = probs @ h.centers()
    width = h.bin_width
    # The Gaussian (sigma = 0.75 bin widths) is cut at the support's ends: away from them, its discretized mean is
    # the target to a tiny fraction of a bin; within 3 sigma of an end the truncation pulls it inward (at the end
    # itself by 0.69 bins: the outermost centre lies half a bin inside, and the half-Gaussian's mean beyond it).
    inner = np.abs(y) <= 10.0 - 3 * 0.75 * width
    assert np.max(np.abs(mean - y)[inner]) < 0.01 * width
    assert np.max(np.abs(mean - y)) < 0.75 * width
    # sigma is sigma_ratio bin widths: a wider Gaussian puts less mass in the target's own bin.
    narrow = head("hl_gauss", sigma_ratio=0.3).target_probs(0.0)
    wide = head("hl_gauss", sigma_ratio=2.0).target_probs(0.0)
    assert float(narrow.max()) > float(h.target_probs(0.0).max()) > float(wide.max())


def test_two_hot_recovers_targets_exactly_on_two_neighbouring_atoms():
    h = head("two_hot")
    y = jnp.linspace(-10.0, 10.0, 1237)
    probs = h.target_probs(y)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert float(probs.min()) >= 0.0 and int((probs > 0).sum(-1).max()) <= 2
    np.testing.assert_allclose(probs @ h.centers(), y, atol=1e-5)
    on_atom = h.target_probs(jnp.float32(h.centers()[7]))
    assert float(on_atom[7]) == pytest.approx(1.0, abs=1e-5)
    # supports with arbitrary float ends (as offline datasets give): no negative mass at the edges either
    rng = np.random.default_rng(0)
    for _ in range(100):
        lo = float(rng.uniform(-500, 0))
        hi = lo + float(rng.uniform(1, 2000))
        g = heads.ValueHead("two_hot", num_bins=int(rng.integers(2, 201)), v_min=lo, v_max=hi)
        p = g.target_probs(jnp.array([lo, hi, 2 * hi, lo - 1.0, (lo + hi) / 2], jnp.float32))
        assert float(p.min()) >= 0.0
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", CLASSIFICATION)
def test_targets_clip_at_the_support_edges(kind):
    h = head(kind)
    for beyond, edge in ((25.0, 10.0), (-1e6, -10.0)):
        np.testing.assert_array_equal(h.target_probs(jnp.float32(beyond)), h.target_probs(jnp.float32(edge)))
    # logits that put all mass on the last bin give the last centre (two_hot: v_max itself)
    logits = jnp.full(51, -1e4).at[-1].set(0.0)
    assert float(h.value(logits)) == pytest.approx(float(h.centers()[-1]), abs=1e-4)


def test_value_of_softmax_logits_is_the_expectation_and_loss_is_cross_entropy():
    h = head("hl_gauss")
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 51))
    np.testing.assert_allclose(h.value(logits), jax.nn.softmax(logits) @ h.centers(), rtol=1e-5)
    target = jnp.array([-3.0, 0.0, 2.5, 9.9])
    expected = -(h.target_probs(target) * jax.nn.log_softmax(logits)).sum(-1)
    np.testing.assert_allclose(h.loss(logits, target), expected, rtol=1e-5)
    # no head lets gradient into the target
    for g, out in ((h, logits), (head("two_hot"), logits), (heads.ValueHead(), logits[:, 0]),
                   (heads.ValueHead(huber_delta=1.0), logits[:, 0])):
        assert float(jnp.abs(jax.grad(lambda t, g=g, out=out: g.loss(out, t).sum())(target)).max()) == 0.0


def test_mse_head_is_the_identity_and_the_squared_error_and_huber_is_linear_outside_delta():
    h = heads.ValueHead()
    x, t = jnp.array([0.3, -2.0, 5.0]), jnp.array([0.0, 1.0, -1.0])
    assert h.value(x) is x and h.out_dim == 1
    np.testing.assert_array_equal(h.loss(x, t), (x - t) ** 2)
    huber = heads.ValueHead(huber_delta=1.0)
    d = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 4.0])
    np.testing.assert_allclose(huber.loss(d, jnp.zeros_like(d)), np.where(np.abs(d) <= 1, d**2, 2 * np.abs(d) - 1),
                               rtol=1e-6)


def test_support_from_rewards_bounds_every_discounted_return():
    assert heads.support_from_rewards(0.0, 1.0, 0.99) == pytest.approx((0.0, 100.0))
    # positive rewards: an episode of one step is worth r_min, less than r_min / (1 - gamma)
    assert heads.support_from_rewards(0.5, 2.0, 0.9) == pytest.approx((0.5, 20.0))
    assert heads.support_from_rewards(-1.0, -0.5, 0.9) == pytest.approx((-10.0, -0.5))
    with pytest.raises(RlzooError, match="--v-min and --v-max"):
        heads.support_from_rewards(0.0, 1.0, 1.0)


def test_bad_head_settings_are_refused_with_what_to_do():
    with pytest.raises(RlzooError, match="--v-min 5.0 and --v-max 5.0"):
        heads.ValueHead("hl_gauss", v_min=5.0, v_max=5.0)
    with pytest.raises(RlzooError, match="unknown value head 'l2'"):
        heads.ValueHead("l2")
    with pytest.raises(RlzooError, match="needs a support"):
        heads.make_head(heads.HeadOptions(value_head="two_hot"))
    # the mse head needs no support: gamma 1 stays allowed (PQN's range is [0, 1]); a classification head there
    # needs the support given
    assert pqn.make_head(pqn.Config(gamma=1.0)).kind == "mse"
    with pytest.raises(RlzooError, match="--gamma 1.0"):
        pqn.make_head(pqn.Config(gamma=1.0, value_head="hl_gauss"))
    assert pqn.make_head(pqn.Config(gamma=1.0, value_head="hl_gauss", v_min=0.0, v_max=50.0)).v_max == 50.0


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("kind", ["mse", "two_hot", "hl_gauss"])
def test_a_small_network_learns_a_noisy_regression_with_each_head(kind):
    """y = 2 sin(3x) + N(0, 0.3^2) on x in [-1, 1]: the head's value must approach the noiseless curve (the mean
    of the noisy targets)."""
    h = heads.ValueHead(kind, num_bins=41, v_min=-3.0, v_max=3.0)
    net = networks.MLP((64, 64), h.out_dim)
    key = jax.random.PRNGKey(0)
    x_test = jnp.linspace(-1, 1, 101)[:, None]
    truth = 2 * jnp.sin(3 * x_test[:, 0])
    params = net.init(key, x_test)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    def predict(params, x):
        out = net.apply(params, x)
        return h.value(out[..., 0] if kind == "mse" else out)

    @jax.jit
    def step(params, opt, key):
        kx, kn = jax.random.split(key)
        x = jax.random.uniform(kx, (128, 1), minval=-1, maxval=1)
        y = 2 * jnp.sin(3 * x[:, 0]) + 0.3 * jax.random.normal(kn, (128,))

        def loss(p):
            out = net.apply(p, x)
            return h.loss(out[..., 0] if kind == "mse" else out, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt

    before = float(jnp.mean((predict(params, x_test) - truth) ** 2))
    for k in jax.random.split(key, 1500):
        params, opt = step(params, opt, k)
    after = float(jnp.mean((predict(params, x_test) - truth) ** 2))
    assert after < 0.03 < before, (kind, before, after)


def test_expectile_weighted_cross_entropy_finds_the_expectile():
    """IQL's V with a classification head: cross-entropy weighted by |tau - 1(y < v)|, v the head's value, has
    the tau-expectile of the targets as its fixed point (the claim in algorithms/iql.py)."""
    h = heads.ValueHead("hl_gauss", num_bins=101, v_min=-10.0, v_max=10.0)
    y = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (4000,)) + 1.0
    tau = 0.8
    grid = jnp.linspace(-5, 5, 100001)
    gap = lambda c: tau * jnp.maximum(y - c, 0).mean() - (1 - tau) * jnp.maximum(c - y, 0).mean()
    coarse = grid[::100]
    expectile = float(coarse[jnp.argmin(jnp.abs(jax.vmap(gap)(coarse)))])  # coarse, then refined below
    fine = jnp.linspace(expectile - 0.01, expectile + 0.01, 2001)
    expectile = float(fine[jnp.argmin(jnp.abs(jax.vmap(gap)(fine)))])
    logits = jnp.zeros(101)
    tx = optax.adam(0.05)
    opt = tx.init(logits)

    @jax.jit
    def step(logits, opt):
        def loss(lg):
            v = jax.lax.stop_gradient(h.value(lg))
            w = iql.expectile_weight(y - v, tau)
            return (w * h.loss(jnp.broadcast_to(lg, (y.shape[0], 101)), y)).mean()

        updates, opt = tx.update(jax.grad(loss)(logits), opt)
        return optax.apply_updates(logits, updates), opt

    for _ in range(1500):
        logits, opt = step(logits, opt)
    assert float(h.value(logits)) == pytest.approx(expectile, abs=0.02)
    assert expectile > float(y.mean()) + 0.5  # an upper expectile, not the mean


# ---------------------------------------------------------------------------------------- every algorithm


def random_batch(key, n, obs_dim, act_dim):
    k = jax.random.split(key, 5)
    return {"observations": jax.random.normal(k[0], (n, obs_dim)),
            "actions": jax.random.uniform(k[1], (n, act_dim), minval=-1.0, maxval=1.0),
            "rewards": jax.random.normal(k[2], (n,)),
            "next_observations": jax.random.normal(k[3], (n, obs_dim)),
            "dones": (jax.random.uniform(k[4], (n,)) < 0.1).astype(jnp.float32)}


OFFLINE = {"iql": iql, "td3_bc": td3_bc, "cql": cql}


# Metrics of the updates below with default options, from the code before value heads (commit 0eae9a3). On one
# machine the default (mse) head reproduces them bit for bit (checked when the heads came in: also whole runs of
# every algorithm); the tolerance only allows another CPU's rounding.
BEFORE_HEADS = json.loads((REPO / "tests" / "data" / "mse_updates_0eae9a3.json").read_text())


@pytest.mark.parametrize("kind", ["mse", "two_hot", "hl_gauss"])
@pytest.mark.parametrize("name", list(OFFLINE) + ["sac"])
def test_every_continuous_algorithm_updates_with_each_head(name, kind):
    """A few updates of each algorithm with each head: the critics output one value or num_bins logits, every
    metric is finite, and the critic's loss falls on a fixed batch; with the default head the first updates
    give what they gave before value heads existed."""
    mod = OFFLINE.get(name, sac)
    extra = {} if kind == "mse" else {"v_min": -20.0, "v_max": 20.0, "num_bins": 21}
    config = mod.Config(hidden_dims=(32, 32), value_head=kind, **extra)
    if name == "cql":
        config = mod.Config(hidden_dims=(32, 32), value_head=kind, cql_n_actions=2, **extra)
    obs_dim, act_dim = 3, 2
    state = mod.init_state(config, jax.random.PRNGKey(0), obs_dim, act_dim)
    critic_out = state["critic"].apply_fn(state["critic"].params, jnp.zeros((5, obs_dim)), jnp.zeros((5, act_dim)))
    assert critic_out.shape == ((2, 5) if kind == "mse" else (2, 5, 21))
    update = jax.jit(mod.make_update(config, act_dim) if name == "sac" else mod.make_update(config))
    batch = random_batch(jax.random.PRNGKey(1), 64, obs_dim, act_dim)
    if name == "td3_bc":
        batch = jax.tree_util.tree_map(lambda x: jnp.stack([x] * config.policy_freq), batch)
    losses = []
    for i in range(30):
        state, metrics = update(state, batch)
        assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), metrics
        if kind == "mse" and i < len(BEFORE_HEADS[name]):
            for key, value in BEFORE_HEADS[name][i].items():
                assert float(metrics[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), (key, i)
        losses.append(float(metrics["td_loss" if name == "cql" else "critic_loss"]))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("kind", ["mse", "two_hot", "hl_gauss"])
def test_pqn_trains_a_chunk_with_each_head(kind):
    """PQN on Breakout-MinAtar: the network gives logits per action and bin, the default support is [0, 100]
    (MinAtar's 0/1 rewards over 1 - gamma), and a chunk of rollouts and updates gives finite metrics (with the
    default head, those it gave before value heads)."""
    config = pqn.Config(value_head=kind, num_envs=16, num_steps=8, num_minibatches=4, chunk=256, total_steps=256)
    h = pqn.make_head(config)
    if kind != "mse":
        assert (h.v_min, h.v_max) == pytest.approx((0.0, 100.0))
    network, init, train_chunk, _ = pqn.make_minatar(config)
    state = jax.jit(init)(jax.random.PRNGKey(0))
    out = network.apply(state["train"].params, state["env"]["obs"])
    assert out.shape == ((16, network.num_actions) if kind == "mse" else (16, network.num_actions, config.num_bins))
    state, metrics = jax.jit(train_chunk)(state)
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
    greedy = jax.jit(lambda p, o: jnp.argmax(h.value(network.apply(p, o)), axis=-1))(state["train"].params,
                                                                                     state["env"]["obs"])
    assert greedy.shape == (16,)
    if kind == "mse":
        for key, value in BEFORE_HEADS["pqn"][0].items():
            assert float(np.asarray(metrics[key])[-1]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_offline_support_comes_from_the_scaled_rewards_and_is_saved(pendulum_store, jax_cache_dir, tmp_path,
                                                                    monkeypatch):
    """An IQL run with --value-head hl_gauss and no --v-min/--v-max records the support derived from the
    dataset's (scaled) rewards and gamma in its config.json, and trains with it."""
    from rlzoo import datasets

    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "algorithms" / "iql.py"), "--env", PENDULUM_ID, "--max-action", "2",
           "--hidden-dims", "32", "32", "--batch-size", "64", "--total-steps", "200", "--chunk", "100",
           "--eval-every", "200", "--checkpoint-every", "200", "--eval-episodes", "1", "--value-head", "hl_gauss",
           "--num-bins", "31", "--run-dir", str(run_dir), "--quiet"]
    env = cli_env(jax_cache_dir, pendulum_store)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((run_dir / "config.json").read_text())
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    data = datasets.load(PENDULUM_ID, download=False)
    r = data.rewards * data.reward_scale()  # IQL scales rewards by default
    expected = heads.support_from_rewards(float(r.min()), float(r.max()), 0.99)
    assert (saved["v_min"], saved["v_max"]) == pytest.approx(expected)
    assert saved["value_head"] == "hl_gauss" and saved["num_bins"] == 31
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 200
    train = list(csv.DictReader((run_dir / "train.csv").open()))
    q = [float(r["q_mean"]) for r in train]
    assert all(expected[0] <= v <= expected[1] for v in q) and all(np.isfinite(float(r["critic_loss"])) for r in train)


def test_sac_classification_head_needs_a_support_off_its_table(jax_cache_dir, tmp_path):
    cmd = [sys.executable, str(REPO / "algorithms" / "sac.py"), "--env", "Pendulum-v1", "--value-head", "two_hot",
           "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(jax_cache_dir), cwd=tmp_path,
                          timeout=300)
    assert_clean_failure(proc, "--value-head two_hot needs a support", "--v-min")
    assert not (tmp_path / "run").exists()
    assert sac.reward_range(sac.Config(env="HalfCheetah-v5")) == (-4.0, 16.0)


def test_heads_report_aggregates_each_family_per_head(tmp_path, capsys):
    """benchmarks.heads reads the runs by their names in scores.csv: MinAtar returns divided by the paper-length
    mse means, offline scores as recorded; one IQM row per (algorithm, head) that has every task."""
    from benchmarks import heads as report
    from benchmarks.results import SCORES_COLUMNS

    rows = []

    def add(algo, task, seed, score, run, steps):
        rows.append({"algorithm": algo, "task": task, "data_source": "online", "seed": seed, "steps": steps,
                     "score": score, "score_kind": "last", "wall_s": 1, "device": "cpu", "commit": "x", "date": "d",
                     "config": f"/root/rlzoo-runs/{run}/config.json", "jax": "0.10.2"})

    for g, game in enumerate(report.GAMES):
        for seed in range(10):
            add("pqn", game, seed, 10.0 * (g + 1), f"pqn-{game}-{report.MINATAR_REFERENCE}", 9994240)
            for h, head in enumerate(report.HEADS):
                run = f"pqn-{game}-s0-n10-1064960-decay9994240" + ("" if head == "mse" else f"-{head}")
                add("pqn", game, seed, 10.0 * (g + 1) * (0.5 + 0.1 * h), run, 1064960)
    for ds in ("hopper-medium-replay", "walker2d-medium-replay"):
        for seed in range(3):
            for algo in ("iql", "td3_bc"):
                add(algo, ds, seed, 40.0 + seed, f"{algo}-{ds}-s0-n3-200k-heads-mse", 200000)
            add("iql", ds, seed, 50.0 + seed, f"iql-{ds}-s0-n3-200k-heads-hl_gauss", 200000)
            add("iql", ds, seed, 99.0, f"iql-{ds}-s0-n3-100k-heads-hl_gauss", 100000)  # other length: left out
    scores = tmp_path / "scores.csv"
    with scores.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCORES_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    report.main(["--scores", str(scores), "--out", str(tmp_path / "heads"), "--reps", "200",
                 "--offline-steps", "200000"])
    minatar = list(csv.DictReader((tmp_path / "heads" / "minatar.csv").open()))
    assert [r["head"] for r in minatar] == list(report.HEADS)
    for h, r in enumerate(minatar):
        assert float(r["iqm"]) == pytest.approx(0.5 + 0.1 * h, rel=1e-3)
    offline = {(r["algorithm"], r["head"]): r for r in csv.DictReader((tmp_path / "heads" / "offline.csv").open())}
    assert set(offline) == {("iql", "mse"), ("iql", "hl_gauss"), ("td3_bc", "mse")}
    assert float(offline[("iql", "hl_gauss")]["mean"]) == pytest.approx(51.0, rel=1e-3)
    assert (tmp_path / "heads" / "minatar.png").stat().st_size > 0
    assert "| iql | hl_gauss |" in capsys.readouterr().out

