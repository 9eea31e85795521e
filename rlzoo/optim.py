"""Optimizers: optax transforms as the algorithms use them."""

from __future__ import annotations

import optax


def flat_adam(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """Adam on all of a network's parameters concatenated into one vector (`optax.flatten`).

    The same arithmetic as `optax.adam`, element by element, but XLA runs it as a few fused ops over one array
    instead of several per parameter array: measured faster on the CPU (`benchmarks/flat_adam.py`). The optimizer
    state holds flat moment vectors, so checkpoints saved with plain `optax.adam` do not restore into it.
    """
    return optax.flatten(optax.adam(learning_rate))
