"""Where the seeds run: the CPU's XLA settings, one PRNG key per seed, and the seed axis over local devices."""

from __future__ import annotations

import os
import re

import jax
import numpy as np

_FORCE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\d+")
_device_limit: int | None = None  # --num-devices: shard_seeds uses at most this many local devices


def configure_cpu(num_devices: int | None = None) -> None:
    """XLA flags for the CPU backend; call before the first computation (`run_cli` does).

    Small-batch RL updates run faster with XLA's intra-op threading off (one core per program; seeds are
    vmapped instead); RLZOO_CPU_THREADS=1 keeps it on. `num_devices` (the --num-devices option), or else
    RLZOO_CPU_DEVICES=N, splits the CPU into N XLA devices, over which `shard_seeds` spreads the seed axis;
    `num_devices` also limits `shard_seeds` to the first N devices on a GPU/TPU, whose backends ignore the flags."""
    global _device_limit
    flags = os.environ.get("XLA_FLAGS", "")
    if not os.environ.get("RLZOO_CPU_THREADS") and "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false"
    if num_devices:  # the command line's count wins over an earlier flag
        flags = _FORCE_COUNT.sub("", flags) + f" --xla_force_host_platform_device_count={int(num_devices)}"
        _device_limit = int(num_devices)
    elif os.environ.get("RLZOO_CPU_DEVICES") and "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={int(os.environ['RLZOO_CPU_DEVICES'])}"
    os.environ["XLA_FLAGS"] = " ".join(flags.split())


def synchronous_dispatch() -> None:
    """For loops that make one tiny jitted call per env step and wait for its result (the streaming
    algorithms): CPU dispatch without JAX's asynchronous queue is 8-14% faster per call there
    (results/stream/speed_levers.csv). Process-wide, and read when the CPU backend starts: call it before the
    first computation (a later call changes nothing)."""
    jax.config.update("jax_cpu_enable_async_dispatch", False)


def seed_keys(seeds: list[int]) -> jax.Array:
    """One PRNG key per seed, stacked on a leading axis: the seed axis every state carries."""
    return jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, dtype=np.uint32))


def shard_seeds(state, data=None, pad: bool = True):
    """Spread the seed axis of `state` over the local devices (at most --num-devices); `data` (shared by all
    seeds) is replicated. On one device this returns its inputs unchanged.

    When the devices do not divide the seeds, the seed axis is padded to a multiple of the device count with
    copies of the last seed (each seed has its own key, so no real seed changes); `drop_padding` removes them
    from whatever leaves the device (metrics, evaluations, checkpoints). With fewer seeds than devices, each
    seed gets a device of its own and the rest stay idle. `pad=False` is for programs that feed the seeds
    host-side inputs of their own (envs stepped on the host): they use the most devices that divide the seeds.
    Either way a one-line notice says what was done."""
    devices = jax.local_devices()
    if _device_limit and _device_limit < len(devices):
        devices = devices[:_device_limit]
    num_seeds = jax.tree_util.tree_leaves(state)[0].shape[0]
    if len(devices) == 1:
        return state, data
    notice = f"[rlzoo] {num_seeds} seeds sharded over {len(devices)} devices"
    if num_seeds < len(devices):
        notice = (
            f"[rlzoo] {num_seeds} seeds on {len(devices)} devices: one seed per device, "
            f"{len(devices) - num_seeds} devices idle"
        )
        devices = devices[:num_seeds]
    elif num_seeds % len(devices) and not pad:
        use = max(d for d in range(1, len(devices)) if num_seeds % d == 0)
        notice = (
            f"[rlzoo] {num_seeds} seeds do not divide over {len(devices)} devices and this program cannot "
            f"pad its seed axis: sharded over {use} of them"
        )
        devices = devices[:use]
    elif num_seeds % len(devices):
        total = -(-num_seeds // len(devices)) * len(devices)
        state = jax.tree_util.tree_map(
            lambda x: np.concatenate([x, np.repeat(x[-1:], total - num_seeds, 0)]), jax.device_get(state)
        )
        notice = (
            f"[rlzoo] {num_seeds} seeds do not divide over {len(devices)} devices: the seed axis is padded "
            f"with {total - num_seeds} copies of the last seed (their results are dropped), "
            f"{total // len(devices)} per device"
        )
    print(notice)
    if len(devices) == 1:
        return state, data
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("seed",))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec("seed")))
    if data is not None:
        data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
    return state, data


def drop_padding(tree, num_seeds: int):
    """`tree` (a state or metrics, seed axis first) without the copies `shard_seeds` padded it with, as host
    arrays: what a checkpoint saves then names no device layout, and a resume may use any number of devices.
    A tree without padding is returned as it is."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves or leaves[0].shape[0] <= num_seeds:
        return tree
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[:num_seeds], tree)
