"""End to end: real DVC stages in a temporary git repo, on tiny params.

One repo is built per module (it takes minutes): `dvc repro train-part1` builds exactly what
part 1 needs, `dvc repro` the rest, and `dvc exp run -S trim.threshold=150` re-runs only
length-trim and what follows it.
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_workspace

from chatmill.io import read_json
from chatmill.metrics import headline_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
REPO_FILES = [
    "chatmill",
    "stages",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
]
TINY = {
    "clean": {"max_quarantine_fraction": 0.5},
    "model": {
        "scratch": {
            "vocab_size": 512,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        }
    },
    "shard": {"seq_len": 128, "eval_fraction": 0.05},
    "train": {"global_batch": 4, "micro_batch": 2, "warmup_steps": 3, "lr": 1e-3, "bf16": True},
    "eval": {
        "prompts": 4,
        "max_new_tokens": 8,
        "batch_size": 4,
        "grid": [
            {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.1},
            {"temperature": 1.0, "top_p": 1.0, "top_k": 40, "repetition_penalty": 1.0},
        ],
    },
}


def run(repo: Path, *command: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def new_repo(repo: Path, scale: float, changes: dict, replace: bool = False) -> Path:
    """A git repo holding the project and sample data generated at `scale`, params.yaml the defaults
    with `changes`, and its dvc.yaml: a user's checkout."""
    for name in REPO_FILES:
        source, target = ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    (repo / "data/sources").mkdir(parents=True)
    shutil.copy(ROOT / "data/sources/generate.py", repo / "data/sources/generate.py")
    shutil.copytree(ROOT / "data/sources/generator", repo / "data/sources/generator")
    run(repo, sys.executable, "data/sources/generate.py", "--scale", str(scale), "--out", "data/sources")
    write_workspace(repo, changes, replace)
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return new_repo(tmp_path_factory.mktemp("pipeline"), 0.08, TINY)


@pytest.fixture(scope="module")
def first_part(repo) -> str:
    return run(repo, "dvc", "repro", "train-part1")


@pytest.fixture(scope="module")
def full_run(repo, first_part) -> str:
    output = run(repo, "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "pipeline outputs")
    return output


def test_repro_train_part1_builds_exactly_what_part1_needs(repo, first_part):
    assert stages_run(first_part) == {
        "fetch",
        "clean",
        "length-trim",
        "base-model",
        "mix",
        "shard",
        "train-part1",
    }
    assert (repo / "models/part-01/model.safetensors").exists()
    assert not (repo / "models/part-02").exists()


def test_changing_the_rank_count_re_runs_no_trained_part(repo, first_part):
    """Ranks are hardware, not a hyperparameter: with part 1 trained, two CPU ranks instead of one
    leave it up to date; only the parts still to train are to run."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["cpu_ranks"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        stale = json.loads(run(repo, "dvc", "status", "--json"))
    finally:
        run(repo, "git", "checkout", "params.yaml")
    assert "train-part1" not in stale and not stale.keys() & {"fetch", "clean", "shard", "base-model"}
    assert "train-part2" in stale


def test_full_repro_then_everything_is_up_to_date(repo, full_run):
    assert stages_run(full_run) == {f"train-part{k}" for k in range(2, 11)} | {"sample-eval"}
    assert "up to date" in run(repo, "dvc", "status")
    breakdown = read_json(repo / "reports/sample-eval.json")
    assert {"eval_loss", "overall", "settings"} <= breakdown.keys()
    assert len(breakdown["settings"]) == 2
    assert read_json(repo / "metrics/sample-eval.json") == headline_metrics(breakdown)
    # The metrics files are in git (full_run committed with `git add -A`), not in the DVC cache only.
    tracked = run(repo, "git", "ls-files", "metrics", "dvclive/part-10").split()
    assert {"metrics/sample-eval.json", "dvclive/part-10/metrics.json"} <= set(tracked)


def test_data_stage_stats_reconcile(repo, full_run):
    for stage in ("clean", "trimmed", "mixed", "shards"):
        stats = read_json(repo / f"data/{stage}/stats.json")
        assert stats["in"] == stats["out"] + sum(stats["dropped"].values()) + stats["quarantined"], stage


def test_part2_continues_part1(repo, full_run):
    first = read_json(repo / "models/part-01/train_state.json")
    second = read_json(repo / "models/part-02/train_state.json")
    assert second["global_step"] == 2 * first["global_step"]
    assert second["tokens_seen"] == 2 * first["tokens_seen"]
    # the LR schedule continues: part 2 starts at the full LR (warmup ended in part 1)
    lrs = (repo / "dvclive/part-02/plots/metrics/train/lr.tsv").read_text().splitlines()[1:]
    first_step, first_lr = lrs[0].split("\t")
    assert int(first_step) == first["global_step"] + 1 and float(first_lr) == pytest.approx(1e-3)
    # the optimizer continues: Adam has taken as many steps as the whole run
    folder = repo / "models/part-02/resume/final"
    optimizer = torch.load(next(folder.glob("*optim_states.pt")), weights_only=False, map_location="cpu")
    adam = optimizer["optimizer_state_dict"]["base_optimizer_state"]["state"][0]
    assert int(adam["step"]) == second["global_step"]


def test_released_weights_load_with_transformers(repo, full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(repo / "models/part-10")
    tokenizer = AutoTokenizer.from_pretrained(repo / "models/part-10")
    prompt = tokenizer(
        "Mira's Persona: A kind innkeeper.\nScenario: \n<START>\nYou: Hi.\nMira:", return_tensors="pt"
    )
    output = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    prompt_length = prompt["input_ids"].shape[1]
    assert torch.equal(output[0, :prompt_length], prompt["input_ids"][0])
    assert 1 <= output.shape[1] - prompt_length <= 3  # it generated, and stopped where it was told


@pytest.fixture(scope="module")
def trim_experiment(repo, full_run) -> str:
    return run(repo, "dvc", "exp", "run", "-S", "trim.threshold=150")


def test_trim_experiment_reruns_trim_and_downstream_only(trim_experiment):
    ran = stages_run(trim_experiment)
    assert {"length-trim", "mix", "shard", "train-part1", "train-part10", "sample-eval"} <= ran
    assert not ran & {"fetch", "clean", "base-model"}


def test_exp_show_fits_the_changed_params_and_headline_metrics_in_160_columns(
    repo, trim_experiment, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "160")
    table = run(repo, "dvc", "exp", "show", "--only-changed", "--no-pager")
    header = next(line for line in table.splitlines() if "Experiment" in line).split()
    # At most the last column is collapsed ("…"): the upstream outputs the experiment changed.
    assert "…" not in header[:-1]
    assert {"trim.threshold", "eval_loss", "heldout.short_rate"} <= set(header)
    # Every row has its numbers: the committed baseline too (its metrics file is in git).
    rows = list(csv.DictReader(io.StringIO(run(repo, "dvc", "exp", "show", "--only-changed", "--csv"))))
    assert len(rows) == 3  # the workspace, the baseline commit, the experiment
    for row in rows:  # numbers: no "!" (unreadable), no "-" (missing)
        assert float(row["eval_loss"]) > 0 and 0 <= float(row["heldout.short_rate"]) <= 1, row


def test_keys_that_change_only_speed_re_run_nothing(repo, full_run):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"] |= {"peak_tflops": 312.0, "save_every": 7, "compile": True, "cpu_ranks": 2}
    params["clean"]["workers"] = 1
    params["shard"]["workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert "up to date" in run(repo, "dvc", "status")
    finally:
        run(repo, "git", "checkout", "params.yaml")
