"""Reading params.yaml. A stage reads exactly the keys its dvc.yaml entry declares (stage_params), so
a change to any other key cannot change its outputs behind DVC's back."""

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from chatmill.errors import ChatmillError

PARAMS_FILE = Path("params.yaml")
PIPELINE_FILE = Path("dvc.yaml")
REGENERATE = "run `make pipeline` (python -m chatmill.pipeline) and commit dvc.yaml"
TRAIN_PART = re.compile(r"train-part(\d+)")


def _load_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ChatmillError(f"{path} not found; run from the repository root") from None
    except yaml.YAMLError as error:
        raise ChatmillError(f"{path} is not valid YAML ({what}): {error}".replace("\n", " ")) from None


def load_params(*sections: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The named top-level sections of params.yaml (all of them if none are named). For tools and
    commands outside the pipeline; a stage reads its keys with stage_params."""
    params = _load_yaml(path, "params")
    if not isinstance(params, dict):
        raise ChatmillError(f"{path} must be a mapping of sections")
    if not sections:
        return params
    missing = [name for name in sections if name not in params]
    if missing:
        raise ChatmillError(f"{path} has no section(s) {', '.join(missing)}")
    return {name: params[name] for name in sections}


def select(params: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Only the dotted `keys` of params (a key may name a whole section), nested as in the file."""
    chosen: dict[str, Any] = {}
    for key in keys:
        value: Any = params
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ChatmillError(f"params.yaml: {key} is missing; {REGENERATE} if you removed it")
            value = value[part]
        *parents, leaf = key.split(".")
        target = chosen
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return chosen


def declared_source_keys(stages: dict[str, Any]) -> set[str]:
    """Every sources.NAME.KEY that some stage of dvc.yaml declares."""
    return {
        key
        for stage in stages.values()
        for key in stage.get("params", [])
        if isinstance(key, str) and key.startswith("sources.")
    }


def check_pipeline_current(stages: dict[str, Any], params: dict[str, Any]) -> None:
    """dvc.yaml is written from params.yaml: its sources and train parts must still be those of
    params.yaml. Otherwise a new source would be ignored, or a part trained that shard never made."""
    sources = params.get("sources")
    if isinstance(sources, dict):
        actual = {
            f"sources.{name}.{key}"
            for name, spec in sources.items()
            if isinstance(spec, dict)
            for key in spec
        }
        declared = declared_source_keys(stages)
        if actual != declared:
            changed = sorted(actual ^ declared)
            raise ChatmillError(
                f"dvc.yaml is out of date with params.yaml ({', '.join(changed[:3])}"
                f"{' ...' if len(changed) > 3 else ''} differ); {REGENERATE}"
            )
    parts = params.get("train", {}).get("parts") if isinstance(params.get("train"), dict) else None
    stage_parts = sum(1 for name in stages if TRAIN_PART.fullmatch(name))
    if isinstance(parts, int) and stage_parts and parts != stage_parts:
        raise ChatmillError(
            f"dvc.yaml has {stage_parts} train parts but params.yaml has train.parts: {parts}; {REGENERATE}"
        )


def stage_params(
    stage: str, params_path: Path = PARAMS_FILE, pipeline: Path = PIPELINE_FILE
) -> dict[str, Any]:
    """The params the stage declares in dvc.yaml, and no others."""
    stages = _load_yaml(pipeline, "the pipeline")
    stages = stages.get("stages", {}) if isinstance(stages, dict) else {}
    if stage not in stages:
        raise ChatmillError(f"{pipeline} has no stage {stage}; {REGENERATE}")
    params = load_params(path=params_path)
    check_pipeline_current(stages, params)
    return select(params, stages[stage].get("params", []))


def stage_settings(*keys: str, params_path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Keys that change how fast or where a stage runs, not its outputs (worker and GPU counts, ...):
    read by the stage, deliberately not declared in dvc.yaml, so changing them re-runs nothing."""
    return select(load_params(path=params_path), keys)


def require(section: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    """Fetch section[key], failing with the full dotted name when it is missing or of the wrong type."""
    if key not in section:
        raise ChatmillError(f"params.yaml: {where}.{key} is missing")
    value = section[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, but `threshold: true` is a mistake, not a number
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if kind is not object and (not isinstance(value, kind) or wrong_bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ChatmillError(f"params.yaml: {where}.{key} must be {names}, got {value!r}")
    return value
