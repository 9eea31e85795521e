"""Where the seeds run: the CPU's XLA settings, one PRNG key per seed, and the seed axis over local devices."""

from __future__ import annotations

import os

import jax
import numpy as np


def configure_cpu() -> None:
    """XLA flags for the CPU backend; call before the first computation (`run_cli` does).

    Small-batch RL updates run faster with XLA's intra-op threading off (one core per program; seeds are
    vmapped instead); RLZOO_CPU_THREADS=1 keeps it on. RLZOO_CPU_DEVICES=N splits the CPU into N XLA devices,
    one core each, over which `shard_seeds` spreads the seed axis. GPU/TPU backends ignore both."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not os.environ.get("RLZOO_CPU_THREADS") and "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false"
    count = os.environ.get("RLZOO_CPU_DEVICES")
    if count and "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={int(count)}"
    os.environ["XLA_FLAGS"] = flags.strip()


def seed_keys(seeds: list[int]) -> jax.Array:
    """One PRNG key per seed, stacked on a leading axis: the seed axis every state carries."""
    return jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, dtype=np.uint32))


def shard_seeds(state, data=None):
    """Spread the seed axis over the local devices when there are several and they divide the seeds;
    `data` (shared by all seeds) is replicated. On one device this returns its inputs unchanged."""
    devices = jax.local_devices()
    num_seeds = jax.tree_util.tree_leaves(state)[0].shape[0]
    if len(devices) == 1 or num_seeds % len(devices):
        return state, data
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("seed",))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec("seed")))
    if data is not None:
        data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
    print(f"[rlzoo] {num_seeds} seeds sharded over {len(devices)} devices")
    return state, data
