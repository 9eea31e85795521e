"""Network modules shared by the algorithms: MLPs, convolutions, actors, critics and a vmapped ensemble.

Every module is written for one sample; batches and seeds are handled by broadcasting and `jax.vmap`.
`Ensemble(module_cls, n)` stacks `n` members' parameters on a leading axis with `nn.vmap`, so the
members run as one batched matmul rather than `n` separate ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


def default_init(scale: float = np.sqrt(2.0)) -> Initializer:
    """Orthogonal init with gain `scale` (the CORL/CleanRL default for MuJoCo MLPs)."""
    return nn.initializers.orthogonal(scale)


def sparse_init(sparsity: float = 0.9) -> Initializer:
    """Sparse initialization (stream-x): weights uniform in +-1/sqrt(fan_in), then in every output unit's incoming
    weights ceil(sparsity x fan_in) entries, chosen at random, set to 0. fan_in is the product of all but the
    last axis (a Dense kernel [in, out] or a conv kernel [kh, kw, C, F])."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
        k_values, k_mask = jax.random.split(key)
        bound = 1.0 / np.sqrt(fan_in)
        w = jax.random.uniform(k_values, (fan_in, fan_out), dtype, -bound, bound)
        num_zeros = int(np.ceil(sparsity * fan_in))
        rank = jnp.argsort(jax.random.uniform(k_mask, (fan_in, fan_out)), axis=0).argsort(axis=0)
        return jnp.where(rank < num_zeros, 0.0, w).astype(dtype).reshape(shape)

    return init


def free_layer_norm(x: jax.Array, axes: int | Sequence[int] = -1, eps: float = 1e-5) -> jax.Array:
    """LayerNorm without affine parameters: (x - mean) / sqrt(var + eps) over `axes`."""
    mean = x.mean(axis=axes, keepdims=True)
    var = jnp.square(x - mean).mean(axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class MLP(nn.Module):
    """Dense layers, each followed by the activation (ReLU by default; with `layer_norm`, a LayerNorm without
    parameters comes before it), then an optional linear output layer."""

    hidden_dims: Sequence[int]
    out_dim: int | None = None
    kernel_init: Initializer = default_init()
    out_init_scale: float = 1.0
    layer_norm: bool = False
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    out_kernel_init: Initializer | None = None  # default: orthogonal with gain out_init_scale
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.Dense(width, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)
            x = self.activation(free_layer_norm(x) if self.layer_norm else x)
        if self.out_dim is not None:
            x = nn.Dense(self.out_dim, kernel_init=self.out_kernel_init or default_init(self.out_init_scale),
                         bias_init=self.bias_init)(x)
        return x


class PatchConv(nn.Module):
    """2-D convolution with VALID padding on NHWC inputs, computed as strided slices (im2col) and one matmul.

    Same parameters (kernel [kh, kw, C, F], bias [F]), initialization and outputs as
    `nn.Conv(features, kernel_size, strides, padding="VALID")`. On CPU its gradient is several times cheaper
    than XLA's convolution (the backward pass becomes a matmul plus pads; measured 8x for PQN's MinAtar
    layer on the project's 2-core CPU), which is what the small convolutional Q-networks spend their time on.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    kernel_init: Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        height, width, channels = x.shape[-3:]
        ho, wo = (height - kh) // sh + 1, (width - kw) // sw + 1
        cols = [
            x[..., i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        patches = jnp.concatenate(cols, axis=-1)  # [..., ho, wo, kh * kw * C], ordered like the kernel
        kernel = self.param("kernel", self.kernel_init, (kh, kw, channels, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return patches @ kernel.reshape(kh * kw * channels, self.features) + bias


class Critic(nn.Module):
    """Q(s, a) -> `out_dim` outputs (1 for a scalar head, the number of bins for a classification head)."""

    hidden_dims: Sequence[int] = (256, 256)
    out_dim: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        q = MLP(self.hidden_dims, self.out_dim)(x)
        return q[..., 0] if self.out_dim == 1 else q


class ValueCritic(nn.Module):
    """V(s) -> `out_dim` outputs."""

    hidden_dims: Sequence[int] = (256, 256)
    out_dim: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        v = MLP(self.hidden_dims, self.out_dim)(obs)
        return v[..., 0] if self.out_dim == 1 else v


class Ensemble(nn.Module):
    """`n` independent copies of `module_cls(**kwargs)` evaluated in one vmapped call.

    Parameters carry a leading axis of size `n`; inputs are shared (broadcast), outputs get a leading
    axis `n`. XLA turns the members' Dense layers into one batched matmul. `in_axes` (nn.vmap's, one entry
    per input) gives members inputs of their own instead, e.g. (None, 0): a shared first input and a second
    one with a leading axis `n`; the parameters are the same either way, so one set serves both.
    """

    module_cls: type[nn.Module]
    n: int
    kwargs: dict | None = None
    in_axes: int | tuple | None = None

    @nn.compact
    def __call__(self, *args):
        vmapped = nn.vmap(
            self.module_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=self.in_axes,
            out_axes=0,
            axis_size=self.n,
        )
        return vmapped(**(self.kwargs or {}))(*args)


class DeterministicActor(nn.Module):
    """a = max_action * tanh(MLP(s)) (TD3, TD3+BC)."""

    act_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    max_action: float = 1.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return self.max_action * jnp.tanh(MLP(self.hidden_dims, self.act_dim)(obs))


class TanhGaussianActor(nn.Module):
    """Gaussian over pre-tanh actions with state-dependent log-std (SAC, CQL); returns (mean, log_std)."""

    act_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = MLP(self.hidden_dims, None)(obs)
        mean = nn.Dense(self.act_dim, kernel_init=default_init(0.01))(h)
        log_std = nn.Dense(self.act_dim, kernel_init=default_init(0.01))(h)
        # Smoothly squash log-std into [min, max] (as in the SAC/CleanRL JAX ports).
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(log_std) + 1)
        return mean, log_std


class GaussianActor(nn.Module):
    """Gaussian with tanh-squashed mean and a state-independent log-std (IQL); returns (mean, log_std)."""

    act_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = MLP(self.hidden_dims, None)(obs)
        mean = jnp.tanh(nn.Dense(self.act_dim, kernel_init=default_init(1e-2))(h))
        log_std = self.param("log_std", nn.initializers.zeros, (self.act_dim,))
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.broadcast_to(log_std, mean.shape)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, x: jax.Array) -> jax.Array:
    """log N(x; mean, exp(log_std)^2), summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def sample_tanh_gaussian(key: jax.Array, mean: jax.Array, log_std: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterized a = tanh(u), u ~ N(mean, std); returns (a, log pi(a)) with the tanh Jacobian."""
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    log_prob = gaussian_log_prob(mean, log_std, u)
    # log(1 - tanh(u)^2) computed stably as 2 (log 2 - u - softplus(-2u)).
    log_prob -= jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
    return jnp.tanh(u), log_prob


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array, eps: float = 1e-6) -> jax.Array:
    """log pi(a) of a given action a in (-1, 1) under a = tanh(u), u ~ N(mean, std) (e.g. dataset actions for
    a behaviour-cloning term); a is clipped to +-(1 - eps) so that atanh stays finite at the bounds."""
    a = jnp.clip(action, -1.0 + eps, 1.0 - eps)
    u = jnp.arctanh(a)
    return gaussian_log_prob(mean, log_std, u) - jnp.sum(jnp.log(1.0 - a**2 + eps), axis=-1)


class QNetwork(nn.Module):
    """Q(s, .): convolutions, then dense layers, each followed by LayerNorm and ReLU; a linear output (PQN: the
    LayerNorms are what keep Q-learning stable without a target network). With `num_bins` > 1 the output is
    [..., num_actions, num_bins] (a classification value head's logits per action)."""

    num_actions: int
    convs: Sequence[tuple[int, int, int]]  # (features, kernel size, stride), VALID padding
    hidden: Sequence[int]
    channels_first: bool = False  # ale-py stacks frames first: [4, 84, 84]
    scale: float = 1.0
    num_bins: int = 1
    # stream Q: sparse init everywhere, LayerNorms without parameters (a conv layer's over all its outputs), leaky ReLU
    sparse: float | None = None
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs.astype(jnp.float32) * self.scale
        if self.channels_first:
            x = jnp.moveaxis(x, -3, -1)
        sparse = self.sparse is not None
        init = sparse_init(self.sparse) if sparse else nn.initializers.he_normal()
        for features, kernel, stride in self.convs:
            x = PatchConv(features, (kernel, kernel), (stride, stride), kernel_init=init)(x)
            # over channels at every position; parameter-free, over the whole feature map, with sparse init
            x = self.activation(free_layer_norm(x, (-3, -2, -1)) if sparse else nn.LayerNorm()(x))
        x = x.reshape(*x.shape[:-3], -1)
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=init)(x)
            x = self.activation(free_layer_norm(x) if sparse else nn.LayerNorm()(x))
        out_init = init if sparse else nn.initializers.lecun_normal()
        if self.num_bins == 1:
            return nn.Dense(self.num_actions, kernel_init=out_init)(x)
        return nn.Dense(self.num_actions * self.num_bins, kernel_init=out_init)(x).reshape(
            *x.shape[:-1], self.num_actions, self.num_bins)
