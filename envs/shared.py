"""What the factory's modules share: repository-relative names, sha256, JSON files, atomic writes, console lines."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rlzoo.errors import RlzooError

ROOT = Path(__file__).resolve().parent.parent  # the repository


def rel(path: Path) -> str:
    """`path` relative to the repository when it is inside it (how records and messages name files)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(path: Path) -> dict:
    """The JSON object in `path`, {} when the file does not exist; a clean error when it is not JSON."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RlzooError(f"{path} is not valid JSON ({err}); delete it or rebuild with --force-refs") from err


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def say(message: str, quiet: bool = False) -> None:
    """One console line of the builder (none when `quiet`)."""
    if not quiet:
        print(f"[build_dataset] {message}", flush=True)
