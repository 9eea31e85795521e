"""The exception type for bad input (its message says what went wrong and what to do) and close-match hints."""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches


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
