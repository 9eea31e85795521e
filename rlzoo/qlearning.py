"""Q-learning building blocks shared by value-based algorithms: lambda-returns and epsilon-greedy acting."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def q_lambda_returns(rewards: jax.Array, dones: jax.Array, next_q: jax.Array, gamma: float, lam: float) -> jax.Array:
    """Q(lambda) targets of a time-major rollout [T, ...]; next_q[t] = max_a Q(s_{t+1}, a)."""

    def backward(g_next, t):
        r, d, q = t
        g = r + gamma * (1.0 - d) * ((1.0 - lam) * q + lam * g_next)
        return g, g

    _, returns = jax.lax.scan(backward, next_q[-1], (rewards, dones, next_q), reverse=True)
    return returns


def eps_greedy(key: jax.Array, q: jax.Array, eps: jax.Array) -> jax.Array:
    """Per env: a uniform random action with probability eps, else argmax_a q."""
    k_explore, k_action = jax.random.split(key)
    random_action = jax.random.randint(k_action, q.shape[:-1], 0, q.shape[-1])
    explore = jax.random.uniform(k_explore, q.shape[:-1]) < eps
    return jnp.where(explore, random_action, jnp.argmax(q, axis=-1)).astype(jnp.int32)


def act_eps_greedy(q_values: Callable, params, key: jax.Array, obs: jax.Array,
                   eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(epsilon-greedy actions, max_a Q(obs, a)) for a batch of observations; `q_values(params, obs)` gives
    Q(obs, .). The max is what Q(lambda) targets bootstrap from, recorded while acting."""
    q = q_values(params, obs)
    return eps_greedy(key, q, eps), q.max(-1)
