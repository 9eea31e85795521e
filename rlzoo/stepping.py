"""One jitted call per env step, for streaming algorithms whose envs run on the host (stream AC, stream TD,
stream Q on Atari): `PerStep` jits and vmaps a one-seed `step(state, *inputs) -> (state, outputs)`.

Such a call does little arithmetic, so much of its time is JAX's per-array cost of passing the state in and out
(about 3 us per array on the project's 2-core CPU). With few seeds PerStep therefore carries the state's float
arrays as one flat vector between calls (split and rejoined inside the jit); with many seeds those copies cost
more than they save and the state stays a tree (`results/stream/speed_levers.csv`: 1.33x at 1 seed, 1.22x at 2,
1.02x at 4, 0.87x at 8).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

FLAT_BELOW = 4  # seeds: flat state for fewer, a tree from here on


class PerStep:
    """`carry = per_step.enter(state)` once per chunk, then `carry, outputs = per_step(carry, *inputs)` per env
    step, and `state = per_step.leave(carry)` before the state is checkpointed or evaluated."""

    def __init__(self, step: Callable, state, flat: bool | None = None):
        leaves, self.treedef = jax.tree_util.tree_flatten(state)
        num_seeds = leaves[0].shape[0]
        self.flat = num_seeds < FLAT_BELOW if flat is None else flat
        self.is_float = [jnp.issubdtype(x.dtype, jnp.floating) for x in leaves]
        self.shapes = [x.shape[1:] for x in leaves]  # one seed's
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        vstep = jax.vmap(step)
        if not self.flat:
            self._call = jax.jit(vstep, donate_argnums=0)
            return

        def flat_step(carry, *inputs):
            state, outputs = vstep(self._unflatten(carry), *inputs)
            return self._flatten(state), outputs

        self._call = jax.jit(flat_step, donate_argnums=0)
        self._enter, self._leave = jax.jit(self._flatten), jax.jit(self._unflatten)

    def _flatten(self, state):
        leaves = jax.tree_util.tree_leaves(state)
        floats = [x.reshape(x.shape[0], -1) for x, f in zip(leaves, self.is_float) if f]
        return jnp.concatenate(floats, axis=1), [x for x, f in zip(leaves, self.is_float) if not f]

    def _unflatten(self, carry):
        flat, others = carry
        others, leaves, start = iter(others), [], 0
        for is_float, shape, size in zip(self.is_float, self.shapes, self.sizes):
            if is_float:
                leaves.append(flat[:, start:start + size].reshape(flat.shape[0], *shape))
                start += size
            else:
                leaves.append(next(others))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def enter(self, state):
        return self._enter(state) if self.flat else state

    def leave(self, carry):
        return self._leave(carry) if self.flat else carry

    def __call__(self, carry, *inputs):
        return self._call(carry, *inputs)
