"""dvc.yaml is written from params.yaml (chatmill/pipeline.py): the committed file is what params.yaml
makes; a stage depends on the chatmill modules its script imports, and on the param keys that change
its outputs, nothing more; and a stage reads exactly the keys it declares."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_PARAMS, ROOT, write_workspace

from chatmill.errors import ChatmillError
from chatmill.params import stage_params, stage_settings
from chatmill.pipeline import code_dependencies, render

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def rendered(**changes) -> dict:
    params = copy.deepcopy(DEFAULT_PARAMS)
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    return yaml.safe_load(render(params))["stages"]


def test_the_committed_dvc_yaml_is_what_params_yaml_makes():
    result = subprocess.run(
        [sys.executable, "-m", "chatmill.pipeline", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_train_parts_decides_the_train_stages_and_their_names():
    stages = rendered(train__parts=5)
    assert [name for name in stages if name.startswith("train")] == [f"train-part{k}" for k in range(1, 6)]
    assert stages["train-part1"]["cmd"] == "PATH=$PWD/.venv/bin:$PATH python stages/train.py --part 1"
    assert "models/base" in stages["train-part1"]["deps"]
    assert "models/part-04" in stages["train-part5"]["deps"]
    # The model in the DVC cache; the DVCLive logs in git, as DVC's convention for them is.
    assert stages["train-part5"]["outs"] == ["models/part-05", {"dvclive/part-05": {"cache": False}}]


def test_metrics_files_are_in_git_and_only_the_headline_is_a_dvc_metric():
    pipeline = yaml.safe_load(render(DEFAULT_PARAMS))
    assert not any("dvclive" in path for path in pipeline.get("metrics", []))  # the parts' summaries: no
    sample_eval = pipeline["stages"]["sample-eval"]
    assert sample_eval["metrics"] == [{"metrics/sample-eval.json": {"cache": False}}]
    assert "reports/sample-eval.json" in sample_eval["outs"]  # every metric: in the DVC cache
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "metrics/sample-eval.json", "dvclive/part-01/metrics.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout == ""  # git tracks them: every commit and experiment has its numbers


@pytest.mark.parametrize(
    "key",
    [
        "train.peak_tflops",
        "train.save_every",
        "train.gpus",
        "train.cpu_ranks",
        "train.hostfile",
        "train.compile",
        "train.fused_optimizer",
        "train.gradient_checkpointing",
        "clean.workers",
        "shard.workers",
    ],
)
def test_keys_that_change_only_speed_or_logging_rerun_nothing(key):
    declared = {param for stage in STAGES.values() for param in stage.get("params", [])}
    section = key.split(".")[0]
    assert key not in declared and section not in declared


def test_stages_declare_keys_not_whole_sections_where_a_section_mixes_both():
    assert "train.lr" in STAGES["train-part3"]["params"]
    assert "clean.filters" in STAGES["clean"]["params"]
    sources = sorted(DEFAULT_PARAMS["sources"])
    assert STAGES["fetch"]["params"] == [f"sources.{name}.uri" for name in sources]


def test_each_stage_depends_on_its_script_and_the_modules_it_imports():
    for name, stage in STAGES.items():
        script = next(word for word in stage["cmd"].split() if word.startswith("stages/"))
        assert [
            dep for dep in stage["deps"] if dep.startswith(("stages/", "chatmill/"))
        ] == code_dependencies(script), name


def test_fetch_depends_on_neither_record_parsers_nor_the_clean_stage():
    fetch = set(code_dependencies("stages/fetch.py"))
    assert not fetch & {"chatmill/records.py", "chatmill/containers.py", "chatmill/clean.py"}
    assert {"chatmill/records.py", "chatmill/containers.py"} <= set(code_dependencies("stages/clean.py"))


def test_sample_eval_does_not_depend_on_compare_release_or_chat():
    deps = set(code_dependencies("stages/sample_eval.py"))
    assert not deps & {"chatmill/compare.py", "chatmill/release.py", "chatmill/chat.py"}


def test_the_base_model_of_a_hub_model_needs_no_cleaned_data():
    stages = rendered(model__base="EleutherAI/gpt-j-6b")
    assert "data/clean" not in stages["base-model"]["deps"]
    assert stages["base-model"]["params"] == ["model.base", "model.revision", "prompt.format"]


def test_prompt_format_is_declared_by_the_stages_whose_outputs_it_changes():
    """base-model writes the format's tokens and chat template, shard encodes in it, sample-eval prompts
    in it, and mix counts a conversation's tokens as it writes them (when mix.by is tokens)."""
    for by, mix_declares in (("conversations", False), ("tokens", True)):
        stages = rendered(mix__by=by)
        declaring = {name for name, stage in stages.items() if "prompt.format" in stage.get("params", [])}
        assert declaring == {"base-model", "shard", "sample-eval"} | ({"mix"} if mix_declares else set())


def test_a_local_base_model_folder_is_a_dependency(tmp_path, monkeypatch):
    (tmp_path / "bases/tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert rendered(model__base="bases/tiny")["base-model"]["deps"][-1] == "${model.base}"


def test_mix_by_tokens_depends_on_the_tokenizer():
    assert "models/base" not in rendered()["mix"]["deps"]
    assert "models/base" in rendered(mix__by="tokens")["mix"]["deps"]


def test_a_stage_reads_exactly_the_keys_it_declares(tmp_path, monkeypatch):
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    train = stage_params("train-part2")["train"]
    assert set(train) == {key.split(".")[1] for key in STAGES["train-part2"]["params"]}
    assert "peak_tflops" not in train
    assert stage_settings("train.peak_tflops") == {
        "train": {"peak_tflops": DEFAULT_PARAMS["train"]["peak_tflops"]}
    }
    fetch = stage_params("fetch")["sources"]
    assert all(set(spec) == {"uri"} for spec in fetch.values())


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda params: params["sources"]["community_logs"].update(sha256="0" * 64),
            r"dvc.yaml is out of date with params.yaml \(sources.community_logs.sha256 differ\); "
            r"run `make pipeline`",
        ),
        (
            lambda params: params["sources"].update(extra=dict(params["sources"]["instructions"])),
            r"dvc.yaml is out of date with params.yaml \(sources.extra.format, .*\); "
            r"run `make pipeline`",
        ),
        (
            lambda params: params["train"].update(parts=5),
            r"dvc.yaml has 10 train parts but params.yaml has train.parts: 5; run `make pipeline`",
        ),
    ],
)
def test_a_stale_dvc_yaml_is_a_one_line_error_naming_the_fix(tmp_path, monkeypatch, change, message):
    params = write_workspace(tmp_path)
    change(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChatmillError, match=message):
        stage_params("clean")


def test_without_dvc_yaml_a_stage_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChatmillError, match="dvc.yaml not found; run from the repository root"):
        stage_params("clean")


@pytest.mark.e2e
def test_the_venv_s_dvc_runs_stages_without_activating_the_venv(tmp_path):
    """`.venv/bin/dvc repro` with a PATH that has no python with chatmill (as when .venv is not
    activated): the stages run with .venv's python all the same."""
    for name in ("chatmill", "stages", "data/sources", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    venv = Path(sys.prefix)  # the tests run in the project's .venv
    (tmp_path / ".venv").symlink_to(venv)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for command in (["git", "init", "-q"], [str(venv / "bin/dvc"), "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True)

    result = subprocess.run(
        [str(venv / "bin/dvc"), "repro", "fetch"], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stdout + result.stderr
    fetched = json.loads((tmp_path / "data/raw/manifest.json").read_text())
    assert set(fetched) == set(DEFAULT_PARAMS["sources"])
