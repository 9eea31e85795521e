"""One exception type for bad input, and the CLI wrapper that prints it as a paragraph, not a traceback."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterable
from difflib import get_close_matches
from typing import TypeVar

T = TypeVar("T")


class RlzooError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""


class NonFiniteLossError(RlzooError):
    """Training produced a NaN/inf loss; the last good checkpoint was kept."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Candidates that look like `name` (difflib ratio, case-insensitive, plus substring hits)."""
    candidates = sorted(set(candidates))
    lowered = {c.lower(): c for c in candidates}
    hits = [lowered[m] for m in get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    hits += [c for c in candidates if name.lower() in c.lower() and c not in hits]
    return hits[:n]


def run_cli(main: Callable[[T], object], config_cls: type[T],
            defaults: Callable[[list[str]], T | None] | None = None) -> None:
    """Parse `config_cls` with tyro, run `main`, and turn an RlzooError into one paragraph and exit 2.

    `defaults(argv)` may return a `config_cls` instance whose values become the defaults (and what `--help`
    shows), e.g. per-task hyperparameters chosen from `--env`; flags given on the command line still win."""
    import tyro

    try:
        default = defaults(sys.argv[1:]) if defaults is not None else None
        config = tyro.cli(config_cls, default=default)
        main(config)
    except RlzooError as err:
        print("\nerror: " + textwrap.fill(str(err), width=100, subsequent_indent="  ",
                                          break_long_words=False, break_on_hyphens=False),
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: resume with --resume <run dir> (the last checkpoint is kept)", file=sys.stderr)
        sys.exit(130)
