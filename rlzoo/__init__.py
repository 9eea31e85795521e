"""rlzoo: a small jitted core for single-file deep-RL algorithms on JAX.

Importing it changes nothing in the process: the command line (`rlzoo.cli.run_cli`) sets XLA's CPU flags
(`rlzoo.devices.configure_cpu`) before the first computation."""

from rlzoo.errors import RlzooError

__all__ = ["RlzooError"]
__version__ = "0.1.0"
