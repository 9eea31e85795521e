"""Value heads: how a value or Q network's outputs become a value, and its loss against scalar targets.

Three heads with one interface (Farebrother et al., 2024, "Stop Regressing: Training Value Functions via
Classification for Scalable Deep RL"):

  mse       one output, the value itself; squared error (or a Huber loss with --huber-delta > 0)
  two_hot   `num_bins` logits over atoms linspace(v_min, v_max, num_bins); the target's mass goes to its two
            neighbouring atoms in proportion to its distance from each, so the expectation recovers it exactly
  hl_gauss  `num_bins` logits over bins with edges linspace(v_min, v_max, num_bins + 1); the target is a
            Gaussian N(y, sigma^2), sigma = sigma_ratio x bin width, integrated over each bin with the normal
            CDF and renormalized to the support; the value is the expectation over the bin centres

The classification heads are trained with cross-entropy against the target distribution (no gradient through
the target), and targets outside [v_min, v_max] are clipped to it. A head is a frozen dataclass, so algorithm
files build it once from their Config (`make_head(config)`) and close over it in their jitted updates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlzoo.errors import RlzooError
from rlzoo.options import option

HEADS = ("mse", "two_hot", "hl_gauss")


@dataclass
class HeadOptions:
    """The value-head options of a value-based algorithm (its Config inherits them, before its own fields).

    The Config must also have `gamma`: a support left unset is derived from the reward range and the discount."""

    value_head: Literal["mse", "two_hot", "hl_gauss"] = "mse"
    """How the critics represent values: mse (a scalar, squared error), two_hot or hl_gauss (logits over
    --num-bins bins on [--v-min, --v-max], cross-entropy against the target's distribution)."""
    num_bins: int = option(101, ">= 2")
    """Bins (atoms) of a classification head."""
    v_min: float | None = option(None, "any")
    """Lower end of a classification head's support (None: derived, and saved in config.json): min(r_min,
    r_min / (1 - gamma)), r_min the smallest reward (offline: of the dataset, after --scale-rewards; online: of
    the task, as the algorithm file states), which bounds every policy's value; lower targets are clipped."""
    v_max: float | None = option(None, "any")
    """Upper end of the support (None: derived as --v-min's, max(r_max, r_max / (1 - gamma)))."""
    sigma_ratio: float = option(0.75, "> 0")
    """hl_gauss: the Gaussian's sigma in bin widths (the paper: 0.75)."""
    huber_delta: float = option(0.0, ">= 0")
    """mse only: 0 for the squared error, else a Huber loss with this threshold (equal to the squared error
    inside it, linear outside)."""


def support_from_rewards(r_min: float, r_max: float, gamma: float) -> tuple[float, float]:
    """[v_min, v_max] holding every discounted return of rewards in [r_min, r_max], of any length >= 1: an
    episode can end after one step (value r) or run forever (value r / (1 - gamma))."""
    if not gamma < 1.0:
        raise RlzooError(f"a value head's support cannot be derived with --gamma {gamma} (returns are unbounded); "
                         "give --v-min and --v-max.")
    v_min = min(r_min, r_min / (1.0 - gamma))
    v_max = max(r_max, r_max / (1.0 - gamma))
    if v_max - v_min < 1e-6:  # constant rewards: any small interval around the one value
        v_min, v_max = v_min - 1.0, v_max + 1.0
    return float(v_min), float(v_max)


@dataclass(frozen=True)
class ValueHead:
    """One head; see the module docstring. `out_dim` is the network's output size per value."""

    kind: str = "mse"
    num_bins: int = 101
    v_min: float = -10.0
    v_max: float = 10.0
    sigma_ratio: float = 0.75
    huber_delta: float = 0.0

    def __post_init__(self):
        if self.kind not in HEADS:
            raise RlzooError(f"unknown value head '{self.kind}': use one of {', '.join(HEADS)}.")
        if self.kind != "mse":
            if not (math.isfinite(self.v_min) and math.isfinite(self.v_max) and self.v_min < self.v_max):
                raise RlzooError(f"--v-min {self.v_min} and --v-max {self.v_max} do not make a support for the "
                                 f"{self.kind} head: give finite values with --v-min < --v-max.")
            if self.num_bins < 2:
                raise RlzooError(f"--num-bins {self.num_bins}: a classification head needs at least 2 bins.")

    @property
    def out_dim(self) -> int:
        return 1 if self.kind == "mse" else self.num_bins

    @property
    def bin_width(self) -> float:
        return (self.v_max - self.v_min) / (self.num_bins - 1 if self.kind == "two_hot" else self.num_bins)

    def edges(self) -> np.ndarray:
        """hl_gauss: the num_bins + 1 bin edges."""
        return np.linspace(self.v_min, self.v_max, self.num_bins + 1, dtype=np.float64)

    def centers(self) -> np.ndarray:
        """The value each output stands for: bin centres (hl_gauss) or atoms (two_hot)."""
        if self.kind == "two_hot":
            return np.linspace(self.v_min, self.v_max, self.num_bins, dtype=np.float64)
        edges = self.edges()
        return (edges[:-1] + edges[1:]) / 2

    def value(self, out: jax.Array) -> jax.Array:
        """Network output -> value: the output itself (mse; its last axis is already squeezed) or the expectation
        of softmax(logits) over the centres (the logits on the last axis)."""
        if self.kind == "mse":
            return out
        return jax.nn.softmax(out, axis=-1) @ jnp.asarray(self.centers(), out.dtype)

    def target_probs(self, target: jax.Array) -> jax.Array:
        """The distribution over bins a classification head is trained toward, for scalar targets (any shape);
        targets are clipped to [v_min, v_max]."""
        y = jnp.clip(target, self.v_min, self.v_max)[..., None]
        if self.kind == "two_hot":
            # float32 rounding can put a target at v_max a hair past the last atom: clip, or a mass goes negative
            pos = jnp.clip((y[..., 0] - self.v_min) / self.bin_width, 0, self.num_bins - 1)
            lower = jnp.clip(jnp.floor(pos), 0, self.num_bins - 2)
            upper_mass = pos - lower
            lower = lower.astype(jnp.int32)
            return (jax.nn.one_hot(lower, self.num_bins) * (1.0 - upper_mass)[..., None]
                    + jax.nn.one_hot(lower + 1, self.num_bins) * upper_mass[..., None])
        if self.kind == "hl_gauss":
            sigma = self.sigma_ratio * self.bin_width
            cdf = jax.scipy.special.erf((jnp.asarray(self.edges(), y.dtype) - y) / (math.sqrt(2.0) * sigma))
            mass = jnp.maximum(cdf[..., 1:] - cdf[..., :-1], 0.0)  # float32 erf can give -1e-7 far in the tails
            return mass / mass.sum(-1, keepdims=True)
        raise ValueError("the mse head has no target distribution")

    def loss(self, out: jax.Array, target: jax.Array) -> jax.Array:
        """Per-value loss of the network output against scalar targets (same shape as the values); the target
        gets no gradient. mse: (out - target)^2 (2 x Huber with --huber-delta, so that both agree inside it);
        classification: the cross-entropy of softmax(logits) against `target_probs(target)`."""
        if self.kind == "mse":
            if self.huber_delta > 0:
                return 2.0 * optax.huber_loss(out, jax.lax.stop_gradient(target), delta=self.huber_delta)
            return (out - jax.lax.stop_gradient(target)) ** 2
        probs = jax.lax.stop_gradient(self.target_probs(target))
        return optax.softmax_cross_entropy(out, probs)


def with_support(config, reward_range: tuple[float, float] | None):
    """`config` with a classification head's unset --v-min / --v-max derived from `reward_range` (r_min, r_max)
    and config.gamma (`support_from_rewards`); other configs, and an unknown range, are returned as they are.
    Algorithms give it to `Run.start(complete=...)`, so that config.json records the support a run used."""
    if config.value_head == "mse" or reward_range is None or (config.v_min is not None and config.v_max is not None):
        return config
    v_min, v_max = support_from_rewards(*reward_range, config.gamma)
    return dataclasses.replace(config, v_min=v_min if config.v_min is None else config.v_min,
                               v_max=v_max if config.v_max is None else config.v_max)


def num_outputs(config) -> int:
    """Network outputs per value for `config`'s head (1, or the number of bins): all a network needs."""
    return 1 if config.value_head == "mse" else config.num_bins


def make_head(config, reward_range: tuple[float, float] | None = None) -> ValueHead:
    """The head `config`'s HeadOptions ask for; an unset support is derived from `reward_range` as in
    `with_support`, and a classification head with neither is refused."""
    config = with_support(config, reward_range)
    if config.value_head == "mse":  # no support: the fields keep placeholders
        return ValueHead("mse", config.num_bins, huber_delta=config.huber_delta)
    if config.v_min is None or config.v_max is None:
        raise RlzooError(f"--value-head {config.value_head} needs a support here: give --v-min and --v-max (the "
                         "range the values can take, e.g. the smallest and largest reward divided by 1 - gamma).")
    return ValueHead(config.value_head, config.num_bins, float(config.v_min), float(config.v_max),
                     config.sigma_ratio, config.huber_delta)
