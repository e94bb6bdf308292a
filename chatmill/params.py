"""Reading params.yaml: each stage asks only for the sections its dvc.yaml entry declares."""

from pathlib import Path
from typing import Any

import yaml

from chatmill.errors import ChatmillError

PARAMS_FILE = Path("params.yaml")


def load_params(*sections: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Return the named top-level sections of params.yaml (all of them if none are named)."""
    try:
        params = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ChatmillError(f"{path} not found; run from the repository root") from None
    except yaml.YAMLError as error:
        raise ChatmillError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(params, dict):
        raise ChatmillError(f"{path} must be a mapping of sections")
    if not sections:
        return params
    missing = [name for name in sections if name not in params]
    if missing:
        raise ChatmillError(f"{path} has no section(s) {', '.join(missing)}")
    return {name: params[name] for name in sections}


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
