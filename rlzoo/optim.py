"""Optimizers the papers need beyond optax's: ObGD (Elsayed, Vasan & Mahmood 2024), the overshooting-bounded
step of streaming TD(lambda) learning with eligibility traces.

    tx = obgd(learning_rate=1.0, gamma=0.99, lam=0.8, kappa=2.0)
    updates, opt_state = tx.update(grads, opt_state, delta=td_error, reset=episode_ended)

`grads` is the gradient of the *negated* prediction (e.g. -V(s), -Q(s, a), -log pi(a|s)), as in the paper's
code, so that `optax.apply_updates` moves the prediction toward its TD target. Per step:
    e <- gamma lam e + grads;  M = lr kappa max(|delta|, 1) ||e||_1  (over every parameter);
    step = lr / M if M > 1 else lr;  params <- params - step delta e;  e <- 0 if reset.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ObGDState(NamedTuple):
    trace: Any  # eligibility traces, shaped like the parameters
    step_size: jax.Array  # the last step's size: lr, or lr / M when the overshooting bound cut it


def obgd(learning_rate: float = 1.0, gamma: float = 0.99, lam: float = 0.8,
         kappa: float = 2.0) -> optax.GradientTransformationExtraArgs:
    """ObGD as an optax transformation; `update` takes the TD error `delta` and `reset` (clear the traces after
    this step: at an episode's end, and for stream Q(lambda) after a non-greedy action) as keyword arguments."""

    def init(params) -> ObGDState:
        return ObGDState(jax.tree_util.tree_map(jnp.zeros_like, params), jnp.asarray(learning_rate, jnp.float32))

    def update(grads, state: ObGDState, params=None, *, delta, reset=False, **_):
        del params
        trace = jax.tree_util.tree_map(lambda e, g: gamma * lam * e + g, state.trace, grads)
        trace_l1 = sum(jnp.abs(e).sum() for e in jax.tree_util.tree_leaves(trace))
        bound = learning_rate * kappa * jnp.maximum(jnp.abs(delta), 1.0) * trace_l1
        step = jnp.where(bound > 1.0, learning_rate / bound, learning_rate).astype(jnp.float32)
        updates = jax.tree_util.tree_map(lambda e: (-step * delta * e).astype(e.dtype), trace)
        trace = jax.tree_util.tree_map(lambda e: jnp.where(reset, jnp.zeros_like(e), e), trace)
        return updates, ObGDState(trace, step)

    return optax.GradientTransformationExtraArgs(init, update)
