"""Device-resident replay and dataset sampling as pure functions, usable inside `jax.lax.scan`.

A buffer is a pytree (`Replay`) of fixed-capacity arrays plus a write pointer and a size; `add` and
`sample` return new values instead of mutating, so they jit, scan and vmap over seeds.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class Replay:
    data: Batch  # every leaf is [capacity, ...]
    size: jax.Array  # int32 scalar: number of valid rows
    ptr: jax.Array  # int32 scalar: next row to write

    @property
    def capacity(self) -> int:
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]


def replay_init(example: Batch, capacity: int) -> Replay:
    """An empty buffer whose rows have the shapes and dtypes of `example` (one transition, no batch axis)."""
    data = jax.tree_util.tree_map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example)
    return Replay(data=data, size=jnp.int32(0), ptr=jnp.int32(0))


def replay_add(buffer: Replay, batch: Batch) -> Replay:
    """Write the `n` rows of `batch` (leading axis n) at the pointer, wrapping around (FIFO)."""
    n = jax.tree_util.tree_leaves(batch)[0].shape[0]
    capacity = buffer.capacity
    rows = (buffer.ptr + jnp.arange(n)) % capacity
    data = jax.tree_util.tree_map(lambda store, x: store.at[rows].set(x.astype(store.dtype)), buffer.data, batch)
    return Replay(
        data=data,
        size=jnp.minimum(buffer.size + n, capacity).astype(jnp.int32),
        ptr=((buffer.ptr + n) % capacity).astype(jnp.int32),
    )


def replay_sample(buffer: Replay, key: jax.Array, batch_size: int) -> Batch:
    """`batch_size` rows drawn uniformly with replacement from the valid part of the buffer."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree_util.tree_map(lambda x: x[idx], buffer.data)


def dataset_sample(data: Batch, key: jax.Array, batch_size: int) -> Batch:
    """`batch_size` rows drawn uniformly with replacement from a static dataset held on the device."""
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree_util.tree_map(lambda x: x[idx], data)
