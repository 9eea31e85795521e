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


def replay_add(buffer: Replay, batch: Batch, mask: jax.Array | None = None) -> Replay:
    """Write the `n` rows of `batch` (leading axis n) at the pointer, wrapping around (FIFO); at most the
    capacity at once. With a boolean `mask` [n], only the rows where it is True are written, packed in their
    order (e.g. the real steps of model rollouts, whose number varies): the others are dropped."""
    n = jax.tree_util.tree_leaves(batch)[0].shape[0]
    capacity = buffer.capacity
    if mask is None:
        rows, count, mode = (buffer.ptr + jnp.arange(n)) % capacity, n, None
    else:
        mask = jnp.asarray(mask, bool).reshape(n)
        offset = jnp.cumsum(mask) - 1
        rows = jnp.where(mask, (buffer.ptr + offset) % capacity, capacity)  # row `capacity` is out of range: dropped
        count, mode = jnp.sum(mask, dtype=jnp.int32), "drop"
    data = jax.tree_util.tree_map(lambda store, x: store.at[rows].set(x.astype(store.dtype), mode=mode),
                                  buffer.data, batch)
    return Replay(
        data=data,
        size=jnp.minimum(buffer.size + count, capacity).astype(jnp.int32),
        ptr=((buffer.ptr + count) % capacity).astype(jnp.int32),
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
