"""chatmill/evaluation.py, the sample-eval stage: its params, the prompt sets, the held-out loss, and
the stage run as DVC runs it (stages/sample_eval.py) on a tiny model. The tiny model and its
workspace are shared with tests/test_generation.py and tests/test_compare.py."""

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_stage, write_workspace
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from chatmill import evaluation, generation
from chatmill.errors import ChatmillError
from chatmill.io import read_json, write_parquet
from chatmill.metrics import headline_metrics, is_short, rep_n, sample_metrics, words
from chatmill.modeling import train_tokenizer
from chatmill.prompt import FORMATS, corpus_texts, encode_conversation, encode_prompt, prepare_tokenizer
from chatmill.schema import CONVERSATION_SCHEMA, make_conversation
from chatmill.shards import IGNORE_INDEX, save_shard

PROMPT_FILE = ROOT / "chatmill/prompts/assistant-v1.yaml"
GRID = [
    {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1},
    {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0},
]
SAMPLE_KEYS = {
    "setting", "temperature", "top_p", "top_k", "repetition_penalty", "prompt_set", "prompt_id", "kind",
    "sample", "conversation_id", "bot_name", "prompt", "reference", "reply", "words", "new_tokens", "stop",
    "short", "rep_4", "repetitive", "keyword_recall", "acceptable",
}  # fmt: skip
METRIC_KEYS = {
    "n_replies", "short_rate", "median_words", "p10_words", "p90_words", "distinct_1", "distinct_2", "rep_4",
    "cross_rep_4", "hit_max_tokens_rate", "accept_rate", "regens_to_accept", "n_prompts",
}  # fmt: skip


def turn(role: str, text: str) -> dict:
    return {"role": role, "name": "You" if role == "user" else "Aria", "text": text}


def conversation(n: int, turns: list[dict]) -> dict:
    return make_conversation(
        "test", "Aria", f"A cheerful guide number {n}.", "A walk in the park.", turns, {}
    )


CONVERSATIONS = [
    conversation(1, [turn("user", "Hello there!"), turn("bot", "Hi! Lovely day for a walk, isn't it?")]),
    conversation(
        2,
        [
            turn("bot", "Welcome back."),
            turn("user", "What is that tree?"),
            turn("bot", "An old oak, older than the town itself."),
            turn("user", "Wow."),
        ],
    ),
    conversation(
        3,
        [
            turn("system", "The sun sets."),
            turn("user", "Should we head home?"),
            turn("bot", "Yes, before it gets dark."),
            turn("user", "Race you there!"),
            turn("bot", "You are on!"),
        ],
    ),
    conversation(4, [turn("bot", "Nobody asked me anything.")]),
]
PROMPT_SPEC = {
    "character": {"bot_name": "Helper", "persona": "A helpful assistant.", "scenario": ""},
    "examples": [
        {"user": "Say hi.", "bot": "Hi there!"},
        {"user": "Count to three.", "bot": "One, two, three."},
    ],
    "tasks": [
        {"id": "recipe", "kind": "recipe", "request": "A recipe for tea?", "expect": ["water", "tea|leaves"]},
        {"id": "code", "kind": "code", "request": "Write a function."},
    ],
}


# --- Params --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"samples_per_prompt": None}, "eval.samples_per_prompt is missing"),
        ({"samples_per_prompt": 0}, "eval.samples_per_prompt=0 must be >= 1"),
        ({"prompt_sets": None}, "eval.prompt_sets is missing"),
        ({"max_rep_4": 1.5}, "eval.max_rep_4=1.5 must be in [0, 1]"),
    ],
)
def test_invalid_eval_params(change, message):
    section = {**EVAL_PARAMS, **change}
    section = {key: value for key, value in section.items() if value is not None}
    with pytest.raises(ChatmillError, match=re.escape(message)):
        evaluation.validate_eval(section)


# --- Prompts -------------------------------------------------------------------------------------


def test_heldout_prompts_reply_to_the_last_user_turn():
    prompts = evaluation.heldout_prompts(reversed(CONVERSATIONS), count=10)
    assert [p.prompt_id for p in prompts] == sorted(c["id"] for c in CONVERSATIONS[:3])
    by_id = {p.prompt_id: p for p in prompts}
    # conversation 2 ends with an unanswered user turn: its reply is the oak one
    oak = by_id[CONVERSATIONS[1]["id"]]
    assert oak.reference == "An old oak, older than the town itself."
    assert oak.context == CONVERSATIONS[1]["turns"][:2] and oak.prompt_set == "heldout"
    assert evaluation.reply_index(CONVERSATIONS[3]["turns"]) is None


def test_fixed_prompts_ask_every_task_zero_shot_and_few_shot():
    prompts = evaluation.fixed_prompts(PROMPT_SPEC, "spec.yaml")
    assert [(p.prompt_set, p.prompt_id) for p in prompts] == [
        ("zero_shot", "recipe"), ("zero_shot", "code"), ("few_shot", "recipe"), ("few_shot", "code"),
    ]  # fmt: skip
    zero, few = prompts[0], prompts[2]
    assert [t["text"] for t in zero.context] == ["A recipe for tea?"]
    assert [t["role"] for t in few.context] == ["user", "bot", "user", "bot", "user"]
    assert few.context[1] == {"role": "bot", "name": "Helper", "text": "Hi there!"}
    assert few.conversation["bot_name"] == "Helper" and few.kind == "recipe"
    assert few.expect == ("water", "tea|leaves") and prompts[1].expect == ()


def test_the_repository_prompt_sets_load():
    prompts = evaluation.load_prompt_sets(str(PROMPT_FILE))
    kinds = {p.kind for p in prompts}
    assert {"recipe", "code"} <= kinds
    assert {p.prompt_set for p in prompts} == {"zero_shot", "few_shot"}
    assert all(p.expect for p in prompts)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "must be a mapping with a character, examples and tasks"),
        ({**PROMPT_SPEC, "character": "Helper"}, "character must be a mapping"),
        ({**PROMPT_SPEC, "tasks": [{"id": "x", "request": "y"}]}, "tasks[0].kind must be a string"),
        ({**PROMPT_SPEC, "tasks": PROMPT_SPEC["tasks"][:1] * 2}, "tasks[1] repeats id recipe"),
        ({**PROMPT_SPEC, "tasks": []}, "has no tasks"),
        ({**PROMPT_SPEC, "examples": [{"user": "hi"}]}, "examples[0].bot must be a string"),
        ({**PROMPT_SPEC, "tasks": ["Write a poem."]}, "tasks[0].id must be a string"),
    ],
)
def test_invalid_prompt_sets(spec, message):
    with pytest.raises(ChatmillError, match=re.escape(message)):
        evaluation.fixed_prompts(spec, "spec.yaml")


def test_missing_prompt_file_is_one_line_error(tmp_path):
    with pytest.raises(ChatmillError, match=r"eval.prompt_sets=.*nope.yaml not found"):
        evaluation.load_prompt_sets(str(tmp_path / "nope.yaml"))


# --- A tiny model ----------------------------------------------------------------------------------


def make_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(corpus_texts(CONVERSATIONS), vocab_size=400)


def make_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        initializer_range=0.5,  # peaked logits: greedy choices are not near-ties decided by rounding
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def pack(tokenizer, conversations: list[dict], seq_len: int) -> dict[str, np.ndarray]:
    """Each conversation one document, two documents per sequence, as the shard stage packs them."""
    documents = []
    for c in conversations:
        header, turns = encode_conversation(tokenizer, c)
        documents.append(sum(turns, header))
    rows = {"input_ids": [], "labels": [], "position_ids": []}
    for first in range(0, len(documents), 2):
        ids, labels, positions = [], [], []
        for document in documents[first : first + 2]:
            ids += document.ids
            labels += [
                i if s else IGNORE_INDEX for i, s in zip(document.ids, document.supervised, strict=True)
            ]
            positions += range(len(document))
        padding = seq_len - len(ids)
        rows["input_ids"].append(ids + [tokenizer.pad_token_id] * padding)
        rows["labels"].append(labels + [IGNORE_INDEX] * padding)
        rows["position_ids"].append(positions + list(range(padding)))
    return {name: np.array(values) for name, values in rows.items()}


def save_model(tokenizer, folder: Path, seed: int = 0) -> Path:
    model = make_model(tokenizer, seed)
    # Defaults a checkpoint may ship with; sample-eval must not let them in.
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=50, typical_p=0.5, no_repeat_ngram_size=2
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokenizer = make_tokenizer()
    folder = save_model(tokenizer, tmp_path_factory.mktemp("model") / "part-10")
    return tokenizer, generation.load_model(folder, "cpu"), folder


def test_prompt_drops_oldest_turns_to_fit(tiny):
    tokenizer = tiny[0]
    c = CONVERSATIONS[2]
    prompt = evaluation.heldout_prompts([c], 1)[0]
    full = evaluation.prompt_ids(tokenizer, prompt, max_tokens=1000)
    assert full == encode_prompt(tokenizer, c, c["turns"][:4])
    shorter = evaluation.prompt_ids(tokenizer, prompt, max_tokens=len(full) - 1)
    assert len(shorter) < len(full)
    assert shorter == encode_prompt(tokenizer, c, c["turns"][1:4])
    assert tokenizer.decode(shorter).endswith("You: Race you there!\nAria:")


def test_few_shot_drops_the_first_examples_first(tiny):
    tokenizer = tiny[0]
    few = evaluation.fixed_prompts(PROMPT_SPEC, "spec.yaml")[2]
    full = evaluation.prompt_ids(tokenizer, few, max_tokens=1000)
    shorter = tokenizer.decode(evaluation.prompt_ids(tokenizer, few, max_tokens=len(full) - 1))
    assert "Say hi." not in shorter and "Count to three." in shorter
    assert shorter.startswith("Helper's Persona: A helpful assistant.")
    assert shorter.endswith("You: A recipe for tea?\nHelper:")


def test_eval_loss_keeps_packed_documents_apart(tiny):
    tokenizer, model, _ = tiny
    packed = pack(tokenizer, CONVERSATIONS[:2], seq_len=128)
    alone = [pack(tokenizer, [c], seq_len=128) for c in CONVERSATIONS[:2]]
    counts = [int((a["labels"][:, 1:] != IGNORE_INDEX).sum()) for a in alone]
    losses = [evaluation.eval_loss(model, a, batch_size=1) for a in alone]
    expected = sum(n * loss for n, loss in zip(counts, losses, strict=True)) / sum(counts)
    assert evaluation.eval_loss(model, packed, batch_size=1) == pytest.approx(expected, rel=1e-4)


# --- The stage -----------------------------------------------------------------------------------


EVAL_PARAMS = {
    "model": "models/part-10",
    "prompts": 3,
    "prompt_sets": "prompts.yaml",
    "samples_per_prompt": 2,
    "max_new_tokens": 8,
    "batch_size": 4,
    "short_words": 5,
    "max_rep_4": 0.2,
    "seed": 0,
    "grid": GRID,
}


def write_params(root: Path) -> None:
    """The committed params with this eval section, the dvc.yaml they make, and the prompt sets."""
    write_workspace(root, {"eval": EVAL_PARAMS})
    (root / "prompts.yaml").write_text(yaml.safe_dump(PROMPT_SPEC))


def stage_workdir(root: Path, model_folder: Path, tokenizer) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "part-10").symlink_to(model_folder)
    eval_dir = root / "data" / "shards" / "eval"
    save_shard(eval_dir, pack(tokenizer, CONVERSATIONS, seq_len=128))
    write_parquet(eval_dir / "conversations.parquet", CONVERSATION_SCHEMA, CONVERSATIONS)
    write_params(root)
    return root


def test_stage_writes_metrics_samples_and_report(tiny, tmp_path, monkeypatch, capsys):
    tokenizer, _, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    run_stage("sample_eval")
    assert "warning" not in capsys.readouterr().err  # eval.prompts=3 held-out conversations are there

    metrics = read_json(Path("reports/sample-eval.json"))
    assert set(metrics) == {"eval_loss", "perplexity", "overall", "settings", "prompt_sets"}
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-5)
    assert list(metrics["settings"]) == ["t0.7-p0.9-k40-r1.1", "t1.0-p1.0-k0-r1.0"]
    # 3 held-out conversations + 2 tasks zero-shot + 2 few-shot, 2 samples each, per setting
    assert metrics["overall"]["n_replies"] == 2 * 2 * (3 + 2 + 2)
    assert set(metrics["overall"]) == METRIC_KEYS | {"keyword_recall"}
    for setting in metrics["settings"].values():
        assert setting["n_replies"] == 2 * (3 + 2 + 2)
        assert 1 <= setting["regens_to_accept"] <= 3
    assert set(metrics["prompt_sets"]) == {"heldout", "zero_shot", "few_shot"}
    assert "keyword_recall" not in metrics["prompt_sets"]["heldout"]
    assert metrics["prompt_sets"]["few_shot"]["settings"]["t1.0-p1.0-k0-r1.0"]["n_replies"] == 4

    samples = [json.loads(line) for line in Path("reports/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 28 and samples[0].keys() == SAMPLE_KEYS
    heldout = [s for s in samples if s["prompt_set"] == "heldout"]
    assert {s["conversation_id"] for s in heldout} == {c["id"] for c in CONVERSATIONS[:3]}
    assert all(s["prompt"].endswith("\nAria:") and s["reference"] for s in heldout)
    assert all(s["stop"] in generation.STOPS and s["new_tokens"] <= 8 for s in samples)
    assert all(s["short"] == is_short(s["reply"], 5, s["stop"] == "max_tokens") for s in samples)
    assert all(
        s["words"] == len(words(s["reply"])) and s["rep_4"] == round(rep_n(s["reply"]), 6) for s in samples
    )
    assert all(s["repetitive"] == (rep_n(s["reply"]) > EVAL_PARAMS["max_rep_4"]) for s in samples)
    assert all(
        s["acceptable"] == (not s["short"] and not s["repetitive"] and s["stop"] != "max_tokens")
        for s in samples
    )

    page = Path("reports/sample-eval.html").read_bytes().decode()  # as written: a reply may hold "\r"
    assert all(html.escape(s["reply"]) in page for s in samples)
    assert page.count('class="sample"') == 28

    outputs = ("reports/samples.jsonl", "reports/sample-eval.json", "metrics/sample-eval.json")
    first = [Path(name).read_bytes() for name in outputs]
    run_stage("sample_eval")
    again = [Path(name).read_bytes() for name in outputs]
    assert again == first  # seeded per setting: reproducible
    # The breakdown is the registry's metrics of the samples file, nothing else; DVC's metrics file
    # holds its headline numbers only.
    loss = {"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"]}
    assert metrics == {**loss, **sample_metrics(samples)}
    assert read_json(Path("metrics/sample-eval.json")) == headline_metrics(metrics)


def test_fewer_heldout_conversations_than_asked_is_a_warning_and_a_recorded_count(
    tiny, tmp_path, monkeypatch, capsys
):
    tokenizer, _, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    write_workspace(tmp_path, {"eval": {**EVAL_PARAMS, "prompts": 16}})

    run_stage("sample_eval")

    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "warning: sample-eval: eval.prompts=16 but only 3 conversations of data/shards/eval have a user "
        "turn to reply to; using 3 held-out prompts (a larger shard.eval_fraction holds out more)"
    ]
    breakdown = read_json(Path("reports/sample-eval.json"))
    assert breakdown["prompt_sets"]["heldout"]["n_prompts"] == 3
    assert breakdown["prompt_sets"]["zero_shot"]["n_prompts"] == len(PROMPT_SPEC["tasks"])
    assert breakdown["overall"]["n_prompts"] == 3 + 2 * len(PROMPT_SPEC["tasks"])


def test_missing_model_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_stage("sample_eval")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: sample-eval: models/part-10 not found; run `dvc repro train-part10` or set eval.model\n"
    )


def test_a_chatml_model_is_prompted_in_chatml(tmp_path, monkeypatch):
    tokenizer = train_tokenizer(corpus_texts(CONVERSATIONS, "chatml"), 400, FORMATS["chatml"].special_tokens)
    prepare_tokenizer(tokenizer, "chatml", "Assistant")  # as base-model makes it
    folder = save_model(tokenizer, tmp_path / "model" / "part-10")
    monkeypatch.chdir(stage_workdir(tmp_path / "run", folder, tokenizer))
    write_workspace(tmp_path / "run", {"eval": EVAL_PARAMS, "prompt": {"format": "chatml"}})

    run_stage("sample_eval")

    samples = [json.loads(line) for line in Path("reports/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 28 and all(s["stop"] in generation.STOPS for s in samples)
    for sample in samples:
        assert sample["prompt"].startswith("<|im_start|>system\n")
        assert sample["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "<START>" not in sample["prompt"] and "<|im_end|>" not in sample["reply"]


def test_a_model_made_for_another_format_than_prompt_format_is_a_one_line_error(
    tiny, tmp_path, monkeypatch, capsys
):
    tokenizer, _, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    write_workspace(tmp_path, {"eval": EVAL_PARAMS, "prompt": {"format": "chatml"}})
    with pytest.raises(SystemExit):
        run_stage("sample_eval")
    assert capsys.readouterr().err == (
        "error: sample-eval: models/part-10 was made for prompt.format: pygmalion, but params.yaml has "
        "prompt.format: chatml; set eval.model to a model trained with it, or re-run its training "
        "(`dvc repro`)\n"
    )
    assert not Path("reports/samples.jsonl").exists()
