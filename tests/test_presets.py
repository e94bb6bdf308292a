"""Presets are complete params sets: `make use PRESET=...` copies one over params.yaml and writes the
dvc.yaml it makes (python -m chatmill.pipeline)."""

import pytest
import torch
import yaml
from conftest import ROOT

from chatmill.params import stage_params, stage_settings
from chatmill.pipeline import render
from chatmill.training import SETTING_KEYS

# The keys that change only how fast or where a stage runs: read with stage_settings, not in dvc.yaml.
SPEED_KEYS = ("clean.workers", "shard.workers", *(f"train.{key}" for key in SETTING_KEYS))
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


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_makes_a_pipeline_whose_stages_find_their_params(preset, tmp_path):
    """What `make use` does, then every stage reading its params as it would under DVC."""
    params_file, pipeline_file = tmp_path / "params.yaml", tmp_path / "dvc.yaml"
    params_file.write_text(preset.read_text())
    pipeline_file.write_text(render(yaml.safe_load(preset.read_text())))
    stages = yaml.safe_load(pipeline_file.read_text())["stages"]
    parts = yaml.safe_load(preset.read_text())["train"]["parts"]
    assert sum(name.startswith("train-part") for name in stages) == parts
    for name, stage in stages.items():
        declared = stage_params(name, params_file, pipeline_file)  # a missing key fails here
        assert set(declared) == {key.split(".")[0] for key in stage.get("params", [])}, name
    assert set(key_paths(stage_settings(*SPEED_KEYS, params_path=params_file))) == set(SPEED_KEYS)


def test_experiment_7_is_the_logbook_run():
    params = yaml.safe_load((ROOT / "presets/experiment-7.yaml").read_text())
    train = params["train"]
    assert train["micro_batch"] * train["gpus"] * 16 == train["global_batch"] == 256
    assert train["lr"] == 0.98e-5 and train["warmup_steps"] == 24
    assert train["bf16"] is True and train["zero_stage"] == 1 and train["parts"] == 10
    grid = params["eval"]["grid"]
    assert {s["top_k"] for s in grid} == {0, 40} and {s["top_p"] for s in grid} == {0.9, 1.0}
    assert min(s["temperature"] for s in grid) == 0.5 and max(s["temperature"] for s in grid) == 1.0


def test_the_lora_example_is_the_embedded_default_with_adapters():
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    lora = yaml.safe_load((ROOT / "presets/lora-example.yaml").read_text())
    assert lora["train"].pop("adapter") == "lora" and default["train"].pop("adapter") == "none"
    assert lora["train"].pop("lr") > default["train"].pop("lr")
    assert lora == default


def test_gpu_1b_is_bench_gpu_s_shape_with_tied_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    params = yaml.safe_load((ROOT / "presets/gpu-1b.yaml").read_text())
    assert params["model"]["base"] == "scratch" and params["shard"]["seq_len"] == 2048
    assert params["train"]["bf16"] is True and params["train"]["gpus"] >= 1
    with torch.device("meta"):  # the shape only: no memory for 1.1B weights
        model = LlamaForCausalLM(LlamaConfig(**params["model"]["scratch"], tie_word_embeddings=True))
    assert model.num_parameters() == 1_034_512_384  # bench-gpu's untied 1.1B less one 32000 x 2048 matrix
