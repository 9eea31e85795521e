"""rlzoo: a small jitted core for single-file deep-RL algorithms on JAX."""

import os as _os

# Small-batch RL updates on CPU run faster with XLA's intra-op threading off (one core per program;
# seeds are vmapped instead). Only the CPU backend reads these flags. Set RLZOO_CPU_THREADS=1 to skip.
if not _os.environ.get("RLZOO_CPU_THREADS") and "xla_cpu_multi_thread_eigen" not in _os.environ.get(
    "XLA_FLAGS", ""
):
    _os.environ["XLA_FLAGS"] = (
        _os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false"
    ).strip()

# RLZOO_CPU_DEVICES=N splits the CPU into N XLA devices; the seed axis is then sharded over them
# (rlzoo.run.shard_seeds), one core per device. On GPU/TPU hosts the real devices are used instead.
if _os.environ.get("RLZOO_CPU_DEVICES"):
    _os.environ["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={int(_os.environ['RLZOO_CPU_DEVICES'])}"

from rlzoo.errors import RlzooError  # noqa: E402

__all__ = ["RlzooError"]
__version__ = "0.1.0"


def _quiet_mujoco_deprecation() -> None:
    """MuJoCo 4 warns (to stdout and MUJOCO_LOG.TXT) that Gymnasium's HalfCheetah/Ant XML uses the deprecated
    'settotalmass' attribute, once per env created: hundreds of lines per run. Drop that one message and
    route every other MuJoCo warning through Python's warnings module."""
    try:
        import mujoco
    except ImportError:
        return
    import warnings

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)


_quiet_mujoco_deprecation()
