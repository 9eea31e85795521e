"""The command line of every algorithm file: tyro flags from its Config, per-task defaults from the Config's
own `TASKS` table, and bad input printed as one paragraph instead of a traceback.

    @dataclass
    class Config(OfflineConfig):
        TASKS: ClassVar[dict] = {"hopper-medium": {"scale_rewards": True}}   # glob over --env -> defaults
        ...
    if __name__ == "__main__":
        run_cli(main, Config)
"""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TypeVar

from rlzoo.devices import configure_cpu
from rlzoo.errors import RlzooError
from rlzoo.options import RANGE_KEY

T = TypeVar("T")


def task_names(env: str) -> list[str]:
    """The names a task's table globs match: the --env itself and, for a Minari id of a D4RL-style dataset
    (mujoco/hopper/medium-v0, rlzoo-local/hopper/medium-v0), its alias (hopper-medium)."""
    names = [env]
    minari_id = re.fullmatch(r"[\w.-]+/([\w]+)/([\w-]+)-v\d+", env)
    if minari_id:
        names.append(f"{minari_id.group(1)}-{minari_id.group(2)}")
    return names


def task_settings(config_cls: type, env: str) -> dict:
    """The options `config_cls.TASKS` sets for `env`: every table whose name (a glob over task names, e.g.
    "hopper-medium" or "hopper-*") matches, later tables overriding earlier ones."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    settings = {}
    for pattern, values in getattr(config_cls, "TASKS", {}).items():
        unknown = sorted(set(values) - fields)
        if unknown:
            raise RlzooError(f"{config_cls.__module__}.{config_cls.__qualname__}.TASKS['{pattern}'] sets "
                             f"{', '.join(unknown)}, which is not an option of that Config; its options are "
                             f"{', '.join(sorted(fields))}. Fix the table in the algorithm's file.")
        if any(fnmatchcase(name, pattern) for name in task_names(env)):
            settings.update(values)
    return settings


def env_in(argv: list[str], default: str) -> str:
    """The value of --env on a command line (or `default`)."""
    for i, arg in enumerate(argv):
        if arg == "--env" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--env="):
            return arg.split("=", 1)[1]
    return default


def task_defaults(config_cls: type[T], argv: list[str]) -> T | None:
    """The Config whose defaults are the per-task settings of the task --env names (None without any), so that
    `--help` shows them and flags given on the command line still override them."""
    if not getattr(config_cls, "TASKS", None):
        return None
    env = env_in(argv, config_cls.env)
    settings = task_settings(config_cls, env)
    if not settings:
        return None
    if not {"--resume", "--help", "-h"} & set(argv):
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        print(f"[rlzoo] per-task defaults for {env} (the algorithm's TASKS table; flags override them): {shown}")
    return config_cls(**settings)


def error_paragraph(err: Exception) -> str:
    """An RlzooError as the one paragraph the command line prints."""
    return "\nerror: " + textwrap.fill(str(err), width=100, subsequent_indent="  ", break_long_words=False,
                                       break_on_hyphens=False)


def with_ranges_in_help(config_cls: type[T]) -> type[T]:
    """A subclass of `config_cls` whose --help shows each option's declared range beside its default (tyro reads
    help text from annotations, and the range lives in the field's metadata)."""
    import typing
    from typing import Annotated

    import tyro

    hints = typing.get_type_hints(config_cls)
    namespace: dict = {"__annotations__": {}, "__module__": config_cls.__module__}
    for field in dataclasses.fields(config_cls):
        spec = field.metadata.get(RANGE_KEY)
        if not spec or spec == "any":
            continue
        hint = tyro.conf.arg(help_behavior_hint=lambda default, spec=spec: f"(range: {spec}) (default: {default})")
        namespace["__annotations__"][field.name] = Annotated[hints[field.name], hint]
        if field.default_factory is not dataclasses.MISSING:
            namespace[field.name] = dataclasses.field(default_factory=field.default_factory, metadata=field.metadata)
        else:
            namespace[field.name] = dataclasses.field(default=field.default, metadata=field.metadata)
    return dataclasses.dataclass(type(config_cls.__name__, (config_cls,), namespace))


def run_cli(main: Callable[[T], object], config_cls: type[T]) -> None:
    """Parse `config_cls` with tyro (per-task defaults applied, ranges shown in --help), run `main`, and turn an
    RlzooError into one paragraph and exit code 2."""
    import tyro

    configure_cpu()  # before the first computation
    try:
        shown = with_ranges_in_help(config_cls)
        config = tyro.cli(shown, default=task_defaults(shown, sys.argv[1:]))
        configure_cpu(getattr(config, "num_devices", None))  # --num-devices, still before the first computation
        main(config)
    except RlzooError as err:
        print(error_paragraph(err), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: resume with --resume <run dir> (the last checkpoint is kept)", file=sys.stderr)
        sys.exit(130)
