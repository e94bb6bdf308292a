"""chatmill/compare.py (`make compare A=... B=...`): two runs side by side, as a metric diff table and
reports/compare.html. A run is a model folder (evaluated now), a git revision or a DVC experiment."""

import json
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import ROOT
from test_evaluation import (
    CONVERSATIONS,
    EVAL_PARAMS,
    METRIC_KEYS,
    PROMPT_SPEC,
    make_tokenizer,
    save_model,
    stage_workdir,
)
from test_metrics import row

from chatmill import compare
from chatmill.generation import validate_grid


def run_compare(monkeypatch, *sources: str) -> None:
    """`python -m chatmill.compare SOURCES` in this process."""
    monkeypatch.setattr(sys, "argv", ["python -m chatmill.compare", *sources])
    compare.main()


def test_diff_table_lists_the_metrics_with_the_change():
    a = {
        "eval_loss": 2.0,
        "overall": {"short_rate": 0.5},
        "prompt_sets": {"x": {"short_rate": 0.1, "settings": {"s": {"short_rate": 0.3}}}},
    }
    b = {
        "eval_loss": 1.5,
        "overall": {"short_rate": 0.25, "rep_4": 0.1},
        "prompt_sets": {"x": {"short_rate": 0.2}},
    }
    rows = compare.diff_rows(a, b)
    assert rows == [
        ("eval_loss", 2.0, 1.5),
        ("overall.short_rate", 0.5, 0.25),
        ("prompt_sets.x.short_rate", 0.1, 0.2),
        ("overall.rep_4", None, 0.1),
    ]
    lines = compare.diff_table(rows, ("exp-a", "exp-b")).splitlines()
    assert lines[0].split() == ["metric", "exp-a", "exp-b", "change", "(B", "-", "A)"]
    assert lines[1].split() == ["eval_loss", "2", "1.5", "-0.5"]
    assert lines[4].split() == ["overall.rep_4", "-", "0.1", "-"]


def test_make_compare_runs_the_module():
    output = subprocess.run(
        ["make", "-n", "-s", "compare", "A=exp-a", "B=models/part-03"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert output.splitlines()[-1].strip().endswith("python -m chatmill.compare exp-a models/part-03")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokenizer = make_tokenizer()
    return tokenizer, save_model(tokenizer, tmp_path_factory.mktemp("model") / "part-10")


def test_compare_two_model_folders(tiny, tmp_path, monkeypatch, capsys):
    tokenizer, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    save_model(tokenizer, tmp_path / "models" / "other", seed=1)
    run_compare(monkeypatch, "models/part-10", "models/other")
    out = capsys.readouterr().out

    # What both runs must show, from the inputs: the eval params, the prompt sets and the conversations.
    settings = [setting.name for setting in validate_grid(EVAL_PARAMS["grid"])]
    answerable = sum(
        any(a["role"] == "user" and b["role"] == "bot" for a, b in pairwise(c["turns"]))
        for c in CONVERSATIONS
    )
    heldout = min(EVAL_PARAMS["prompts"], answerable)
    tasks = len(PROMPT_SPEC["tasks"])
    replies = len(settings) * EVAL_PARAMS["samples_per_prompt"] * (heldout + 2 * tasks)
    assert (heldout, replies) == (3, 28)
    prompt_sets = {"heldout": METRIC_KEYS} | {
        name: METRIC_KEYS | {"keyword_recall"} for name in ("zero_shot", "few_shot")
    }
    listed = {"eval_loss", "perplexity"}
    for group in ["overall", *(f"settings.{name}" for name in settings)]:
        listed |= {f"{group}.{metric}" for metric in METRIC_KEYS | {"keyword_recall"}}
    for name, keys in prompt_sets.items():
        listed |= {f"prompt_sets.{name}.{metric}" for metric in keys}

    table = out[out.index("metric ") :].split("\n\n")[0].splitlines()
    assert table[0].split()[:3] == ["metric", "models/part-10", "models/other"]
    names = [line.split()[0] for line in table[1:]]
    assert len(names) == len(set(names)) and set(names) == listed
    for line in table[1:]:
        name, a, b, change = line.split()
        assert a != "-" and b != "-", name  # both runs measured every metric listed
        assert change == "0" or change[0] in "+-", line
    values = {line.split()[0]: line.split()[1:3] for line in table[1:]}
    assert values["overall.n_replies"] == [str(replies), str(replies)]
    assert values[f"settings.{settings[0]}.n_replies"] == [str(replies // len(settings))] * 2

    page = Path("reports/compare.html").read_text()
    groups = 1 + len(settings) + len(prompt_sets) + len(prompt_sets) * len(settings)
    assert "models/other" in page and page.count('class="sample"') == 2 * replies
    assert page.count('class="delta"') == groups and page.count('class="missing"') == 0


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("workspace", "error: compare: the workspace has no reports/sample-eval.json; run `dvc repro"),
        (
            "no-such-exp",
            "error: compare: no-such-exp is not a model folder, and its sample-eval results cannot",
        ),
    ],
    ids=["workspace", "unknown revision"],
)
def test_compare_unreadable_source_is_one_line_error(source, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    with pytest.raises(SystemExit) as exit_info:
        run_compare(monkeypatch, source, source)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1


@pytest.mark.e2e
def test_compare_two_dvc_experiments(tmp_path, monkeypatch, capsys):
    """Two experiments of a stand-in stage that writes sample-eval's outputs: compare reads each one's
    full breakdown (not the headline DVC metrics) and samples from the DVC cache by experiment name."""
    monkeypatch.chdir(tmp_path)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "t")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "t@example.com")
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}:{Path(shutil.which('git')).parent}:/usr/bin:/bin"
    )
    rows = [row(f"p{index}") for index in range(4)]
    Path("rows.json").write_text(json.dumps(rows))
    Path("write.py").write_text(
        "import json, yaml\n"
        "rate = yaml.safe_load(open('params.yaml'))['rate']\n"
        "rows = [{**r, 'short': i < rate * 4} for i, r in enumerate(json.load(open('rows.json')))]\n"
        "open('reports/samples.jsonl', 'w').write(''.join(json.dumps(r) + '\\n' for r in rows))\n"
        "metrics = {'eval_loss': 1.0, 'overall': {'short_rate': rate}}\n"
        "json.dump(metrics, open('reports/sample-eval.json', 'w'))\n"
        "json.dump({'eval_loss': 1.0}, open('metrics/sample-eval.json', 'w'))\n"
    )
    Path("params.yaml").write_text("rate: 0.25\n")
    Path("dvc.yaml").write_text(
        "stages:\n  sample-eval:\n    cmd: mkdir -p reports metrics && python write.py\n"
        "    deps: [write.py, rows.json]\n    params: [rate]\n"
        "    outs: [reports/samples.jsonl, reports/sample-eval.json]\n"
        "    metrics: [{metrics/sample-eval.json: {cache: false}}]\n"
    )
    dvc = [sys.executable, "-m", "dvc"]
    for command in (
        ["git", "init", "-q"],
        [*dvc, "init", "-q"],
        [*dvc, "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "base"],
        [*dvc, "exp", "run", "-q", "-n", "half", "-S", "rate=0.5"],
    ):
        subprocess.run(command, check=True, capture_output=True)
    run_compare(monkeypatch, "HEAD", "half")
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["overall.short_rate", "0.25", "0.5", "+0.25"]
    assert Path("reports/compare.html").read_text().count('class="sample"') == 2 * len(rows)
