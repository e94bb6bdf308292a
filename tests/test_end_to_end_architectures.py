"""End to end with base models of every architecture the presets and docs name, as a user brings one:
`model.base` a local folder holding a tiny model of that architecture with a tokenizer of its
family (built from config and `tokenizers`, nothing downloaded). For each, `dvc repro sample-eval`
trains part 1 and samples from it, and the release dry run loads with transformers' pipeline and
chats through its template. Then experiment 7's own preset, with a tiny GPT-J in the 6B's place:
seq_len 2048, bf16, ZeRO-1, gradient checkpointing, mix by tokens, its sampling grid; only the
sizes scaled to minutes and the sources local."""

import copy
import json

import pytest
import yaml
from conftest import (
    ARCHITECTURES,
    ROOT,
    gpt2_bpe_tokenizer,
    qwen_tokenizer,
    sentencepiece_tokenizer,
    tiny_base,
    write_workspace,
)
from test_end_to_end import new_repo, run, stages_run

from chatmill.io import read_json

pytestmark = pytest.mark.e2e
TOKENIZERS = {  # each architecture with the tokenizer family its real models use
    "gptj": gpt2_bpe_tokenizer,
    "gpt-neox": gpt2_bpe_tokenizer,
    "llama": sentencepiece_tokenizer,
    "mistral": lambda: sentencepiece_tokenizer(metaspace=True),
    "qwen2": qwen_tokenizer,
}
TINY = {
    "clean": {"max_quarantine_fraction": 0.5},
    "shard": {"seq_len": 128, "eval_fraction": 0.1},
    "train": {"parts": 1, "global_batch": 4, "micro_batch": 2, "warmup_steps": 3, "lr": 1e-3},
    "eval": {
        "model": "models/part-01",
        "prompts": 3,
        "samples_per_prompt": 1,
        "max_new_tokens": 8,
        "batch_size": 8,
        "grid": [{"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}],
    },
    "release": {"sampling": "t0.7-p0.9-k40-r1.1"},
}
SAMPLE_SOURCES = {
    "community_logs": "data/sources/pippa-sample.jsonl.gz",
    "instructions": "data/sources/alpaca-sample.json",
    "fresh_logs": "data/sources/sharegpt-fresh.jsonl",
}


def save_base(repo, architecture: str, max_positions: int) -> str:
    folder = f"bases/{architecture}"
    tokenizer = TOKENIZERS[architecture]()
    tiny_base(architecture, tokenizer, max_positions=max_positions).save_pretrained(repo / folder)
    tokenizer.save_pretrained(repo / folder)
    return folder


def released_chat(repo) -> str:
    """The release folder through transformers' pipeline: a reply to a persona and a message."""
    from transformers import pipeline

    chat = pipeline("text-generation", model=str(repo / "release"))
    messages = [{"role": "system", "content": "A kind innkeeper."}, {"role": "user", "content": "A room?"}]
    out = chat(messages, max_new_tokens=4, do_sample=False, tokenizer_encode_kwargs={"bot_name": "Mira"})
    return out[0]["generated_text"][-1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return new_repo(tmp_path_factory.mktemp("architectures"), 0.03, TINY)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_local_base_of_each_architecture_trains_samples_and_releases(repo, architecture):
    base = save_base(repo, architecture, max_positions=256)
    params = write_workspace(repo, {**TINY, "model": {"base": base, "revision": "main"}})
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", f"base: {architecture}")
    ran = stages_run(run(repo, "dvc", "repro", "sample-eval"))
    assert {"base-model", "shard", "train-part1", "sample-eval"} <= ran

    config = json.loads((repo / "models/part-01/config.json").read_text())
    assert config["model_type"] == json.loads((repo / base / "config.json").read_text())["model_type"]
    state = read_json(repo / "models/part-01/train_state.json")
    assert state["global_step"] > 0 and state["loss_last"] < state["loss_first"]
    breakdown = read_json(repo / "reports/sample-eval.json")  # every metric; metrics/ has the headline
    assert breakdown["overall"]["n_replies"] == (3 + 2 * 8) * 1  # 3 held out, 8 zero- and 8 few-shot tasks
    assert breakdown["eval_loss"] == read_json(repo / "metrics/sample-eval.json")["eval_loss"] > 0

    run(repo, "python", "-m", "chatmill.release", "--dry-run")
    reply = released_chat(repo)
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)
    card = (repo / "release/README.md").read_text()
    assert f"fine-tuned from `{base}`" in card and params["train"]["parts"] == 1


def experiment_7(base: str) -> dict:
    """presets/experiment-7.yaml on the CPU: the sources local, a tiny GPT-J for the 6B, the sizes
    scaled to minutes; everything else (seq_len 2048, bf16, ZeRO-1, gradient checkpointing, fused
    AdamW, mix by tokens, the grid) as the preset has it."""
    params = copy.deepcopy(yaml.safe_load((ROOT / "presets/experiment-7.yaml").read_text()))
    for name, uri in SAMPLE_SOURCES.items():
        params["sources"][name]["uri"] = uri
    params["model"]["base"] = base
    params["clean"]["max_quarantine_fraction"] = 0.5  # the sample's planted faults, in a tiny sample
    params["shard"]["eval_fraction"] = 0.1
    params["train"] |= {"parts": 2, "global_batch": 4, "micro_batch": 2, "gpus": 0, "save_every": 0}
    params["eval"] |= {"model": "models/part-02", "prompts": 2, "samples_per_prompt": 1, "max_new_tokens": 4}
    return params


def test_the_experiment_7_preset_with_a_tiny_gpt_j_runs_through_sample_eval(tmp_path):
    repo = new_repo(tmp_path / "experiment-7", 0.02, {})
    params = experiment_7(save_base(repo, "gptj", max_positions=2048))
    write_workspace(repo, params, replace=True)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "experiment 7, tiny")
    ran = stages_run(run(repo, "dvc", "repro"))
    assert ran == {
        "fetch",
        "clean",
        "length-trim",
        "base-model",
        "mix",
        "shard",
        "train-part1",
        "train-part2",
    } | {"sample-eval"}
    shards = read_json(repo / "data/shards/stats.json")
    assert shards["seq_len"] == 2048
    assert json.loads((repo / "models/part-02/config.json").read_text())["model_type"] == "gptj"
    assert (
        read_json(repo / "models/part-02/train_state.json")["global_step"]
        == 2 * shards["sequences_per_part"] // 4
    )
    breakdown = read_json(repo / "reports/sample-eval.json")
    assert len(breakdown["settings"]) == len(params["eval"]["grid"]) == 7
