"""Run options: the fields every algorithm shares, and ranges declared beside each field.

An algorithm's Config declares each hyperparameter with `option(default, range)`, e.g.
`expectile: float = option(0.7, "(0, 1)")`, so a file copied into another project can grow an option,
with its range, without touching rlzoo. `check_option_ranges` refuses a value outside its range before
anything is built (a zero batch size would otherwise surface as a NaN loss at step 2).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from rlzoo.errors import RlzooError

RANGE_KEY = "rlzoo_range"
_INTERVAL = re.compile(r"^([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])$")
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")


def parse_range(spec: str):
    """(description, predicate) for ">= 1", "> 0", "[0, 1]", "(0, 1]", "[1, inf)" ... or "any" (no bound)."""
    spec = spec.strip()
    if spec == "any":
        return "any number", lambda v: True
    bound = _BOUND.match(spec)
    if bound:
        op, x = bound.group(1), float(bound.group(2))
        test = {">=": lambda v: v >= x, ">": lambda v: v > x, "<=": lambda v: v <= x, "<": lambda v: v < x}[op]
        words = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}[op]
        return f"{words} {bound.group(2)}", test
    interval = _INTERVAL.match(spec)
    if interval:
        lo_open, lo, hi, hi_close = interval.group(1) == "(", float(interval.group(2)), float(interval.group(3)), \
            interval.group(4) == ")"
        return f"in {spec}", lambda v: (v > lo if lo_open else v >= lo) and (v < hi if hi_close else v <= hi)
    raise ValueError(f"unreadable option range {spec!r}: use '>= x', '> x', '[a, b]', '(a, b]', ... or 'any'")


def option(default: Any, range: str) -> Any:  # noqa: A002  (the word a reader expects)
    """A Config field with its default and the range its values must lie in (checked at the run's start)."""
    parse_range(range)  # a typo in a range fails where it is written, at import
    meta = {RANGE_KEY: range}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def numeric_fields(config_cls) -> list[dataclasses.Field]:
    """The fields whose values are numbers (or tuples of numbers): the ones that need a declared range."""
    out = []
    for field in dataclasses.fields(config_cls):
        default = field.default if field.default is not dataclasses.MISSING else None
        values = default if isinstance(default, tuple) else (default,)
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out.append(field)
    return out


def check_option_ranges(config) -> None:
    """Refuse a numeric option outside its declared range, or NaN, naming the flag and what it may be."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers:
            continue
        flag = "--" + field.name.replace("_", "-")
        if any(isinstance(v, float) and math.isnan(v) for v in numbers):
            raise RlzooError(f"{flag} is NaN; give it a number (--help lists every option with its default).")
        if RANGE_KEY not in field.metadata:
            continue
        allowed, ok = parse_range(field.metadata[RANGE_KEY])
        if not all(ok(v) for v in numbers):
            each = "each entry " if isinstance(value, (tuple, list)) else ""
            shown = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else value
            raise RlzooError(f"{flag} {shown}: {each}must be {allowed} (--help lists every option with its "
                             "default).")


@dataclass
class RunConfig:
    """Options every algorithm shares (seeds, length, evaluation, logging, checkpoints)."""

    env: str = "halfcheetah-medium"
    """Task: a dataset name (offline) or a Gymnasium env id (online)."""
    seed: int = option(0, ">= 0")
    """First seed; seeds are seed, seed+1, ..., seed+num_seeds-1."""
    num_seeds: int = option(1, ">= 1")
    """Independent seeds trained together in one vmapped program."""
    total_steps: int = option(1_000_000, ">= 1")
    """Training steps (gradient steps offline, env steps online); a multiple of chunk."""
    chunk: int = option(1000, ">= 1")
    """Steps per compiled chunk (one lax.scan); the host is touched once per chunk."""
    eval_every: int = option(5000, ">= 1")
    """Evaluate every this many steps (a multiple of chunk)."""
    eval_episodes: int = option(10, ">= 1")
    """Evaluation episodes per seed."""
    checkpoint_every: int = option(5000, ">= 1")
    """Checkpoint every this many steps (a multiple of chunk); the last one is always written."""
    run_dir: str | None = None
    """Where logs and checkpoints go (default: runs/<algorithm>-<env>-<time>)."""
    resume: str | None = None
    """Resume the run in this directory from its newest checkpoint (its saved hyperparameters are used)."""
    wandb: bool = False
    """Log to Weights & Biases: one run per seed, grouped by the run directory's name."""
    wandb_project: str = "rlzoo"
    """Weights & Biases project."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """online, offline or disabled; auto = online if WANDB_API_KEY is set, else offline."""
    quiet: bool = False
    """No progress bar."""
    num_devices: int | None = option(None, ">= 1")
    """Local devices to spread the seeds over (default: all; on CPU, RLZOO_CPU_DEVICES or 1). On CPU it splits the
    processor into this many XLA devices; seeds that do not divide over them are padded, not run on one."""


# Options that say where and how a run reports, not what it computes (config.json records them too): a
# resumed run takes them from its command line, and comparisons of hyperparameters ignore them.
HOST_OPTIONS = frozenset({"run_dir", "resume", "quiet", "wandb", "wandb_mode", "wandb_project", "algorithm",
                          "num_devices"})
