"""What each locally built dataset is: its env, behaviour policy, size and seed (the D4RL recipe), the names
the builder accepts, the command that builds one, and why a recipe cannot be built yet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envs.shared import ROOT, read_json, rel
from rlzoo.datasets import COMPOSITES, KINDS, MUJOCO_ENVS, aliases, split_alias
from rlzoo.errors import RlzooError, close_matches

BUILD_COMMAND = "python -m envs.build_dataset"  # run from the repository root
PICK_COMMAND = "python -m envs.pick_policies"
# Read as recipes.POLICY_DIR at call time (tests point it at a temporary folder).
POLICY_DIR = ROOT / "envs" / "policies"
POLICIES_JSON = "policies.json"  # in POLICY_DIR: how each behaviour policy was trained and picked

RANDOM = "random"  # behaviour: uniform random actions
REPLAY = "replay"  # behaviour: the replay buffer of the SAC run that trained the medium policy
RECIPE_ENVS = 20  # environments a recipe's dataset is collected with (they change the data)


def build_command(alias: str) -> str:
    """The command that builds `alias`, as messages and build records give it."""
    return f"{BUILD_COMMAND} {alias}"


@dataclass(frozen=True)
class Recipe:
    """How one dataset is made (the D4RL recipe: 1M transitions of one behaviour policy)."""

    env_id: str
    behaviour: str  # RANDOM, REPLAY, or a policy file name in POLICY_DIR (or an absolute path)
    steps: int = 1_000_000
    seed: int = 0


def _recipes() -> dict[str, Recipe]:
    # One row per dataset; medium-expert needs no row (it is built as its parts, medium + expert).
    # medium-replay (REPLAY) is as long as the SAC run was when the medium policy was taken: `steps` unused.
    table = {}
    for task, env_id in MUJOCO_ENVS.items():
        table[f"{task}-random"] = Recipe(env_id, RANDOM)
        table[f"{task}-medium"] = Recipe(env_id, f"{task}-medium.npz")
        table[f"{task}-expert"] = Recipe(env_id, f"{task}-expert.npz")
        table[f"{task}-medium-replay"] = Recipe(env_id, REPLAY, steps=0)
    return table


RECIPES: dict[str, Recipe] = _recipes()


def policy_path(behaviour: str) -> Path:
    """A recipe's policy file: a name in POLICY_DIR (envs/policies/), or an absolute path."""
    return POLICY_DIR / behaviour


def policy_records(path: Path | None = None) -> dict:
    """envs/policies/policies.json: per behaviour policy, the SAC run configuration and step it came from."""
    return read_json(path or POLICY_DIR / POLICIES_JSON)


def unavailable(alias: str) -> str | None:
    """Why `alias` cannot be built now (one paragraph), or None when it can."""
    recipe = RECIPES[alias]
    task, kind = split_alias(alias)
    if recipe.behaviour == RANDOM:
        return None
    if recipe.behaviour == REPLAY:
        entry = policy_records().get(f"{task}-medium", {})
        if "sac_config" in entry and "step" in entry:
            return None
        return (
            f"'{alias}' is the replay buffer of the SAC run that trained {task}-medium's behaviour policy, "
            "up to the step where that policy was taken (the D4RL recipe). The builder regenerates it by "
            "re-running that training with algorithms/sac.py, so it needs the run's configuration and the "
            f"step in {rel(POLICY_DIR / POLICIES_JSON)} (entry '{task}-medium'). Write it by picking the "
            f"policies from a finished SAC run: {PICK_COMMAND} --task {task} --run-dir <SAC run directory>"
        )
    path = policy_path(recipe.behaviour)
    if path.is_file():
        return None
    level = {"medium": "about one third of the expert's return", "expert": "fully trained"}.get(kind, kind)
    return (
        f"the behaviour policy of '{alias}' is missing: {rel(path)} does not exist. It is a SAC actor "
        f"({level}) from a SAC run trained with `python algorithms/sac.py --env {recipe.env_id} --save-policy-"
        f"every 10000` (1M steps, the D4RL recipe); when that run has finished, pick its expert and medium "
        f"policies with `{PICK_COMMAND} --task {task} --run-dir <SAC run directory>` and run this command again."
    )


def parts(alias: str) -> list[str]:
    """The datasets a name is built as: its composite's parts (medium-expert -> medium, expert), or itself."""
    task, kind = split_alias(alias)
    return [f"{task}-{p}" for p in COMPOSITES.get(kind, (kind,))]


def check_alias(alias: str) -> None:
    """Raise a one-paragraph RlzooError unless `alias` has a recipe (or is a composite of recipes)."""
    parsed = split_alias(alias)
    if parsed is not None and parsed[1] in COMPOSITES:
        for part in parts(alias):
            check_alias(part)
        return
    if alias in RECIPES:
        return
    buildable = sorted(RECIPES)
    if parsed is not None:
        raise RlzooError(
            f"{BUILD_COMMAND} has no recipe for '{alias}' yet; it can build: {', '.join(buildable)}. Add a "
            "Recipe(env id, behaviour policy file under envs/policies/, trained with algorithms/sac.py) to "
            "RECIPES in envs/recipes.py."
        )
    matches = close_matches(alias, buildable + aliases() + ["all"])
    raise RlzooError(
        f"unknown dataset '{alias}'. "
        + (f"Close matches: {', '.join(matches)}. " if matches else "")
        + f"Give D4RL-style names <task>-<kind> with task in {{{', '.join(MUJOCO_ENVS)}}} and kind in "
        f"{{{', '.join(KINDS)}}}, or 'all'; recipes exist for: {', '.join(buildable)}."
    )


def expand(names: list[str] | tuple[str, ...]) -> list[str]:
    """Aliases in order, 'all' replaced by every recipe whose behaviour policy exists; all checked first."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [a for a in RECIPES if unavailable(a) is None and a not in out]
            continue
        check_alias(name)
        if name not in out:
            out.append(name)
    return out
