"""The command line of every algorithm file: tyro flags from its Config, per-task defaults from the Config's
own `TASKS` table, and bad input printed as one paragraph instead of a traceback.

    @dataclass
    class Config(OfflineConfig):
        TASKS: ClassVar[dict] = {"hopper-medium": {"scale_rewards": True}}   # glob over --env -> defaults
        ...
    if __name__ == "__main__":
        run_cli(main, Config)

A table's names are globs over the task (--env) by default. A Config whose per-task values also depend on other
options names them in a `TASK_KEY` format string, e.g. `TASK_KEY: ClassVar[str] = "{env}/{corruption_mode}"`:
the globs then match that string, filled with the command line's values (or the defaults), e.g.
"hopper-*/adversarial".
"""

from __future__ import annotations

import dataclasses
import re
import string
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


def task_keys(config_cls: type, env: str, options: dict | None = None) -> list[str]:
    """The strings `config_cls.TASKS`'s globs are matched against: each task name of `env`, put into the Config's
    `TASK_KEY` format (default "{env}") with the other options it names taken from `options` (else defaults)."""
    key = getattr(config_cls, "TASK_KEY", "{env}")
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    names = [name for _, name, _, _ in string.Formatter().parse(key) if name]
    unknown = sorted(set(names) - set(defaults))
    if unknown:
        raise RlzooError(f"{config_cls.__module__}.{config_cls.__qualname__}.TASK_KEY {key!r} names "
                         f"{', '.join(unknown)}, which is not an option of that Config. Fix it in the algorithm's "
                         "file.")
    values = {n: (options or {}).get(n, defaults[n]) for n in names if n != "env"}
    return [key.format(**{**values, "env": name}) for name in task_names(env)]


def task_settings(config_cls: type, env: str, options: dict | None = None) -> dict:
    """The options `config_cls.TASKS` sets for `env` (and `options`, when the Config's TASK_KEY names others):
    every table whose name (a glob over task keys, e.g. "hopper-medium" or "hopper-*") matches, later tables
    overriding earlier ones."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    keys = task_keys(config_cls, env, options)
    settings = {}
    for pattern, values in getattr(config_cls, "TASKS", {}).items():
        unknown = sorted(set(values) - fields)
        if unknown:
            raise RlzooError(f"{config_cls.__module__}.{config_cls.__qualname__}.TASKS['{pattern}'] sets "
                             f"{', '.join(unknown)}, which is not an option of that Config; its options are "
                             f"{', '.join(sorted(fields))}. Fix the table in the algorithm's file.")
        if any(fnmatchcase(name, pattern) for name in keys):
            settings.update(values)
    return settings


def env_in(argv: list[str], default: str) -> str:
    """The value of --env on a command line (or `default`)."""
    return flag_in(argv, "env", default)


def flag_in(argv: list[str], name: str, default):
    """The value of option `name` (e.g. corruption_mode, as --corruption-mode) on a command line (or `default`)."""
    flag = "--" + name.replace("_", "-")
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def task_defaults(config_cls: type[T], argv: list[str]) -> T | None:
    """The Config whose defaults are the per-task settings of the task --env names (None without any), so that
    `--help` shows them and flags given on the command line still override them."""
    if not getattr(config_cls, "TASKS", None):
        return None
    env = env_in(argv, config_cls.env)
    options = {f.name: flag_in(argv, f.name, f.default) for f in dataclasses.fields(config_cls)}
    settings = task_settings(config_cls, env, options)
    if not settings:
        return None
    if not {"--resume", "--help", "-h"} & set(argv):
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        print(f"[rlzoo] per-task defaults for {task_keys(config_cls, env, options)[0]} (the algorithm's TASKS table; "
              f"flags override them): {shown}")
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
    doc = config_cls.__doc__ or ""
    if doc and not doc.startswith(config_cls.__name__ + "("):  # the Config's own docstring, not dataclass's default
        namespace["__doc__"] = doc
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
