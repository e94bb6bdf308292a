"""Presets are complete params sets: `make use PRESET=...` copies one over params.yaml."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def key_paths(tree: dict, prefix: str = "") -> set[str]:
    """Dotted names of all settings; the sources' names are the preset's own choice."""
    paths = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key != "sources":
            paths |= key_paths(value, f"{prefix}{key}.")
        else:
            paths.add(f"{prefix}{key}")
    return paths


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_sets_exactly_the_params_the_stages_read(preset):
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert key_paths(yaml.safe_load(preset.read_text())) == key_paths(default)


def test_experiment_7_is_the_logbook_run():
    params = yaml.safe_load((ROOT / "presets/experiment-7.yaml").read_text())
    train = params["train"]
    assert train["micro_batch"] * train["gpus"] * 16 == train["global_batch"] == 256
    assert train["lr"] == 0.98e-5 and train["warmup_steps"] == 24
    assert train["bf16"] is True and train["zero_stage"] == 1 and train["parts"] == 10
    grid = params["eval"]["grid"]
    assert {s["top_k"] for s in grid} == {0, 40} and {s["top_p"] for s in grid} == {0.9, 1.0}
    assert min(s["temperature"] for s in grid) == 0.5 and max(s["temperature"] for s in grid) == 1.0
