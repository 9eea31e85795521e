"""Shared fixtures: isolated Minari stores with tiny datasets from competent controllers (Pendulum-v1,
InvertedPendulum-v5)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")

from rlzoo.devices import configure_cpu  # noqa: E402

configure_cpu()  # the XLA flags every command line sets, before this process's first computation

PENDULUM_ID = "rlzoo-test/pendulum/controller-v0"
INVERTED_PENDULUM_ID = "rlzoo-test/invertedpendulum/controller-v0"


def assert_clean_failure(proc, *needles: str) -> str:
    """Exit code 2, no traceback, and the needles in the (whitespace-normalized) error paragraph."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert "error: " in proc.stderr
    paragraph = proc.stderr.split("error: ", 1)[1].strip()
    assert "\n\n" not in paragraph  # one paragraph
    flat = " ".join(paragraph.split())
    for needle in needles:
        assert needle in flat, flat
    return flat


def assert_figure(path: Path) -> None:
    """`path` is a PNG that decodes to a picture with something drawn on it (not one flat colour)."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 100 and float(image[..., :3].std()) > 0.01, path


def pendulum_controller(obs: np.ndarray) -> float:
    """Energy-pumping swing-up plus a PD balancer: a competent Pendulum-v1 policy (return ~ -150)."""
    c, s, w = obs
    theta = np.arctan2(s, c)
    if c > 0.9:
        return float(np.clip(-(12.0 * theta + 2.5 * w), -2, 2))
    energy = w**2 / 6.0 + 5.0 * (c - 1.0)  # relative to upright, uniform rod with m = l = 1, g = 10
    if abs(w) < 1e-3:
        return 2.0
    return float(2.0 * np.sign(w) if energy < 0 else -0.5 * np.sign(w))


def write_controller_dataset(dataset_id: str, env_id: str, controller, episodes: int, noise: float, seed: int,
                             ref_min_score: float, ref_max_score: float) -> str:
    """Write `episodes` episodes of `controller(obs)` plus Gaussian action noise (std `noise`, clipped to the
    action bounds) into the Minari store; returns the id."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    env = gym.make(env_id)
    low, high = float(env.action_space.low[0]), float(env.action_space.high[0])
    buffers = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        o, a, r, te, tr = [obs], [], [], [], []
        done = False
        while not done:
            action = np.clip(controller(obs) + noise * rng.standard_normal(), low, high)
            obs, reward, terminated, truncated, _ = env.step(np.array([action], np.float32))
            o.append(obs), a.append([action]), r.append(reward), te.append(terminated), tr.append(truncated)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=ep, observations=np.asarray(o, np.float32),
                                     actions=np.asarray(a, np.float32), rewards=np.asarray(r),
                                     terminations=np.asarray(te), truncations=np.asarray(tr), infos={}))
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env_id, ref_min_score=ref_min_score,
                                       ref_max_score=ref_max_score, algorithm_name="controller + noise")
    return dataset_id


def build_pendulum_dataset(dataset_id: str = PENDULUM_ID, episodes: int = 20, noise: float = 0.3,
                           seed: int = 0) -> str:
    """Swing-up-controller episodes of Pendulum-v1 (20: data return about -156); `noise` is the action noise's
    std as a fraction of the torque bound 2."""
    return write_controller_dataset(dataset_id, "Pendulum-v1", pendulum_controller, episodes, noise * 2.0, seed,
                                    ref_min_score=-1200.0, ref_max_score=-140.0)


def build_inverted_pendulum_dataset(dataset_id: str = INVERTED_PENDULUM_ID, episodes: int = 5, noise: float = 0.5,
                                    seed: int = 0) -> str:
    """Episodes of InvertedPendulum-v5 under a linear balancer; `noise` is the action noise's std in action
    units (the bound is 3). With 5 episodes and noise 0.5 each one balances for the full 1000 steps; the
    random policy falls after about 5 steps, doing nothing after 24."""
    gains = np.array([1.0, 10.0, 1.0, 1.0])  # cart position, pole angle, their velocities
    return write_controller_dataset(dataset_id, "InvertedPendulum-v5", lambda obs: float(gains @ obs), episodes,
                                    noise, seed, ref_min_score=0.0, ref_max_score=1000.0)


def pendulum_random_return(episodes: int = 10, seed: int = 123) -> float:
    """Mean return of the uniform random policy on Pendulum-v1 (about -1240): what an offline learner must beat."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    total = 0.0
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            total += r
            done = terminated or truncated
    return total / episodes


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """A fresh, empty Minari store for one test."""
    path = tmp_path / "minari"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def _store(path: Path, build) -> Path:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        build()
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return path


@pytest.fixture(scope="session")
def pendulum_store(tmp_path_factory):
    """A Minari store holding the Pendulum controller dataset (built once per session)."""
    return _store(tmp_path_factory.mktemp("minari-pendulum"), build_pendulum_dataset)


@pytest.fixture(scope="session")
def inverted_pendulum_store(tmp_path_factory):
    """A Minari store holding the InvertedPendulum controller dataset (built once per session)."""
    return _store(tmp_path_factory.mktemp("minari-inverted-pendulum"), build_inverted_pendulum_dataset)


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """A JAX persistent-compilation-cache folder shared by this session's command-line runs.

    The first run of a configuration compiles; later runs of the same programs (a repeat, a resume)
    load the same executables instead of recompiling, which on a 2-core CPU saves ~20 s per run."""
    return tmp_path_factory.mktemp("jax-cache")


def checkpoint_steps(run_dir) -> list[int]:
    """The steps of the complete checkpoints in a run directory."""
    from pathlib import Path

    d = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def load_checkpoint(run_dir, step: int | None = None) -> tuple[dict, dict]:
    """The saved training state of a run as {path: numpy array} (every leaf), and its meta dict."""
    from pathlib import Path

    import jax
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(Path(run_dir).resolve() / "checkpoints")
    step = manager.latest_step() if step is None else step
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
    manager.close()
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(out["state"])[0]}
    return flat, out["meta"]


def kill_once_checkpointed(command: list[str], run_dir, min_step: int, env: dict, cwd,
                           timeout: float = 300) -> list[int]:
    """Start `command`, SIGKILL it as soon as a checkpoint at `min_step` or later exists, and return the
    checkpoint steps it left behind (fails the test if the run ends by itself first)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not any(s >= min_step for s in checkpoint_steps(run_dir)):
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed: " + proc.stdout.read().decode()[-3000:])
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return checkpoint_steps(run_dir)


def cli_env(cache: Path, store: Path | None = None, **extra: str) -> dict:
    """Environment of a subprocess under test: CPU JAX with the session's compilation cache, unbuffered
    output, wide progress lines, and optionally a Minari store; `extra` variables are added last."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1", COLUMNS="200")
    if store is not None:
        env["MINARI_DATASETS_PATH"] = str(store)
    env.update(extra)
    return env


def resumed_step(stdout: str) -> int:
    """The step a `--resume` run says it resumed at (fails the test if it does not say so)."""
    import re

    match = re.search(r"resumed at step (\d+)", stdout)
    assert match, stdout[-3000:]
    return int(match.group(1))


def assert_logs_match(run_dir, reference_dir) -> None:
    """A resumed run's train.csv and eval.csv read as if it had never stopped: equal to an uninterrupted run's."""
    from pathlib import Path

    for name in ("train.csv", "eval.csv"):
        assert (Path(run_dir) / name).read_text() == (Path(reference_dir) / name).read_text(), name


def help_options(text: str) -> dict[str, str]:
    """tyro's --help, read back as {flag: its shown default} ('' if none shown): an option starts a row `│ --flag`
    (a boolean's `--x, --no-x` counts as --x; a wrapped description is indented, so it never starts one) and its
    description runs on until the next option."""
    import re

    options: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        if line.startswith("│ --"):
            current = line[2:].split()[0].rstrip(",")
            options[current] = []
        if current is not None:
            options[current].append(line.strip("│ "))
    shown = {}
    for flag, parts in options.items():
        defaults = re.findall(r"\(default: ([^()]*)\)", " ".join(" ".join(parts).split()))
        shown[flag] = defaults[-1] if defaults else ""
    return shown


def assert_help_shows(text: str, config_cls, expected: dict[str, str]) -> None:
    """--help lists a flag for every field of `config_cls`, and shows `expected` {flag: default} on those flags."""
    import dataclasses

    shown = help_options(text)
    missing = [f.name for f in dataclasses.fields(config_cls) if "--" + f.name.replace("_", "-") not in shown]
    assert not missing, f"--help lacks {missing}"
    assert {flag: shown.get(flag) for flag in expected} == expected


@pytest.fixture
def plotted_labels(monkeypatch) -> list[tuple[str, int]]:
    """(legend label, number of points) of every labelled line drawn with Axes.plot during the test, in order
    (the figure still draws)."""
    import matplotlib.axes

    labels, original = [], matplotlib.axes.Axes.plot

    def plot(ax, *args, **kwargs):
        lines = original(ax, *args, **kwargs)
        if "label" in kwargs:
            labels.append((kwargs["label"], sum(len(line.get_xdata()) for line in lines)))
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    return labels
