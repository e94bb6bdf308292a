import html
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sample_eval
import torch
import yaml
from base_model import train_tokenizer
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from chatmill import generation
from chatmill.errors import ChatmillError
from chatmill.generation import Reply, Setting
from chatmill.io import read_json, write_parquet
from chatmill.prompt import encode_conversation, encode_prompt, render_text
from chatmill.schema import CONVERSATION_SCHEMA, make_conversation
from chatmill.shards import IGNORE_INDEX, save_shard

ROOT = Path(__file__).resolve().parents[1]
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
    "cross_rep_4", "hit_max_tokens_rate", "accept_rate", "regens_to_accept",
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


def row(prompt="p1", reply="a reply of enough words here", sample=0, setting="s", **fields) -> dict:
    """A sample row as sample_row writes it, with the flags derived from the reply unless given."""
    values = {
        "prompt_set": "heldout",
        "prompt_id": prompt,
        "kind": "conversation",
        "sample": sample,
        "setting": setting,
        "bot_name": "Aria",
        "prompt": f"Aria's Persona: ...\nYou: {prompt}?\nAria:",
        "reference": None,
        "reply": reply,
        "words": len(sample_eval.words(reply)),
        "short": sample_eval.is_short(reply, 5),
        "rep_4": sample_eval.rep_n(reply),
        "repetitive": False,
        "stop": "eos",
        "keyword_recall": None,
    }
    values |= fields
    values.setdefault("acceptable", not values["short"] and values["stop"] != "max_tokens")
    return values


# --- Reply metrics -------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", ["...", "Yes.", "Hm?", "", "  ?! ", "*nods*"])
def test_ultra_short_replies_are_short_whatever_short_words_says(reply):
    assert sample_eval.is_short(reply, short_words=0)


def test_short_words_threshold():
    assert sample_eval.is_short("I do not know", short_words=5)
    assert not sample_eval.is_short("I really do not know", short_words=5)
    assert not sample_eval.is_short("Oh well.", short_words=0)


def test_a_reply_cut_off_by_max_new_tokens_is_short_only_when_ultra_short():
    assert not sample_eval.is_short("I do not know", short_words=5, cut_off=True)
    assert sample_eval.is_short("... ... ...", short_words=5, cut_off=True)


def test_words_ignore_punctuation_and_keep_contractions():
    assert sample_eval.words("Don't... go, Bob!") == ["don't", "go", "bob"]


def test_distinct_n_counts_ngrams_within_replies():
    # "a b c" -> (a,b) (b,c); "a b" -> (a,b); no bigram across the two replies
    assert sample_eval.distinct_n(["a b c", "A b."], 2) == pytest.approx(2 / 3)
    assert sample_eval.distinct_n(["a b c", "A b."], 1) == pytest.approx(3 / 5)
    assert sample_eval.distinct_n(["...", "Yes."], 2) == 0.0


def test_rep_n_is_the_share_of_repeated_4grams_in_a_reply():
    # 4-grams: abcd bcda cdab dabc abcd: one of five repeats an earlier one
    assert sample_eval.rep_n("a b c d a b c d") == pytest.approx(1 / 5)
    # 8 words, 5 4-grams, 2 distinct ones
    assert sample_eval.rep_n("she nods. she nods. she nods. she nods.") == pytest.approx(3 / 5)
    assert sample_eval.rep_n("no repeats in this reply") == 0.0
    assert sample_eval.rep_n("too short") == 0.0


def test_keyword_recall_accepts_alternatives():
    expect = ["flour", "egg|eggs", "milk"]
    assert sample_eval.keyword_recall("Mix the flour with two EGGS.", expect) == pytest.approx(2 / 3)
    assert sample_eval.keyword_recall("Anything.", []) is None


def test_cross_rep_counts_phrases_shared_with_other_prompts_only():
    rows = [
        row("p1", "she smiles and says hello"),  # 4-grams: [she smiles and says], [smiles and says hello]
        row("p1", "she smiles and says hello", sample=1),  # the same prompt again: not a mannerism
        row("p2", "she smiles and says goodbye"),  # shares [she smiles and says] with p1
        row("p3", "nothing in common at all"),
        row("p4", "Hm?"),  # no 4-gram: left out of the mean
    ]
    # p1: 1 of 2 shared, twice; p2: 1 of 2; p3: 0 of 2
    assert sample_eval.cross_rep(rows) == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)
    assert sample_eval.mannerisms(rows) == [("she smiles and says", 2)]
    assert sample_eval.cross_rep([row("p1", "Hm?")]) == 0.0


def test_regens_to_accept_counts_samples_until_the_first_acceptable_one():
    rows = [
        row("p1", sample=1, acceptable=True),  # sample order, not row order, counts: p1 -> 2
        row("p1", sample=0, acceptable=False),
        row("p2", sample=0, acceptable=True),  # p2 -> 1
        row("p2", sample=1, acceptable=False),
        row("p3", sample=0, acceptable=False),  # p3: none of 2 -> 3
        row("p3", sample=1, acceptable=False),
        row("p1", sample=0, acceptable=True, setting="other"),  # another setting is another draw: 1
    ]
    assert sample_eval.regens_to_accept(rows) == pytest.approx((2 + 1 + 3 + 1) / 4)


def test_reply_metrics():
    rows = [
        row("p1", "..."),
        row("p2", "Hm?"),
        row("p3", "one two three four five six", stop="max_tokens"),
        row("p4", "a b c d e", keyword_recall=0.5),
    ]
    assert sample_eval.reply_metrics(rows) == {
        "n_replies": 4,
        "short_rate": 0.5,
        "median_words": 3.0,  # of 0, 1, 6 and 5 words
        "p10_words": 0.3,
        "p90_words": 5.7,
        "distinct_1": 1.0,
        "distinct_2": 1.0,
        "rep_4": 0.0,
        "cross_rep_4": 0.0,
        "hit_max_tokens_rate": 0.25,
        "accept_rate": 0.25,
        "regens_to_accept": 1.75,
        "keyword_recall": 0.5,
    }


def test_sample_metrics_pool_all_settings_and_sets():
    samples = [
        row("p1", "Yes.", setting="a"),
        row("p2", "I would love to come along with you", setting="b"),
        row("p1", "Let us go to the lake today", setting="a", prompt_set="zero_shot"),
    ]
    metrics = sample_eval.sample_metrics(samples)
    assert list(metrics["settings"]) == ["a", "b"]
    assert metrics["settings"]["a"]["n_replies"] == 2 and metrics["settings"]["a"]["short_rate"] == 0.5
    assert metrics["overall"]["n_replies"] == 3
    assert metrics["overall"]["short_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert list(metrics["prompt_sets"]) == ["heldout", "zero_shot"]
    heldout = metrics["prompt_sets"]["heldout"]
    assert heldout["n_replies"] == 2 and list(heldout["settings"]) == ["a", "b"]
    assert set(heldout["settings"]["a"]) == METRIC_KEYS


# --- Params --------------------------------------------------------------------------------------


def test_grid_settings_and_names():
    settings = sample_eval.validate_grid(GRID)
    assert [s.name for s in settings] == ["t0.7-p0.9-k40-r1.1", "t1.0-p1.0-k0-r1.0"]
    assert settings[1].top_k == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": None}, "eval.grid[0].temperature is missing"),
        ({"top_k": None}, "eval.grid[0].top_k is missing"),
        ({"temperature": 0}, "temperature=0.0 must be > 0"),
        ({"top_p": 0}, "top_p=0.0 must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p=1.5 must be in (0, 1]"),
        ({"top_k": -1}, "top_k=-1 must be >= 0"),
        ({"top_k": 0.5}, "eval.grid[0].top_k must be int"),
        ({"repetition_penalty": 0}, "repetition_penalty=0.0 must be > 0"),
        ({"typical_p": 0.9}, "unknown key(s) typical_p"),
    ],
)
def test_invalid_grid_entries(change, message):
    entry = {**GRID[0], **change}
    entry = {key: value for key, value in entry.items() if value is not None}
    with pytest.raises(ChatmillError, match=re.escape(message)):
        sample_eval.validate_grid([entry])


def test_empty_or_repeated_grid():
    with pytest.raises(ChatmillError, match="non-empty list"):
        sample_eval.validate_grid([])
    with pytest.raises(ChatmillError, match="repeats setting"):
        sample_eval.validate_grid([GRID[0], dict(GRID[0])])


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
        sample_eval.validate_eval(section)


# --- Prompts -------------------------------------------------------------------------------------


def test_heldout_prompts_reply_to_the_last_user_turn():
    prompts = sample_eval.heldout_prompts(reversed(CONVERSATIONS), count=10)
    assert [p.prompt_id for p in prompts] == sorted(c["id"] for c in CONVERSATIONS[:3])
    by_id = {p.prompt_id: p for p in prompts}
    # conversation 2 ends with an unanswered user turn: its reply is the oak one
    oak = by_id[CONVERSATIONS[1]["id"]]
    assert oak.reference == "An old oak, older than the town itself."
    assert oak.context == CONVERSATIONS[1]["turns"][:2] and oak.prompt_set == "heldout"
    assert sample_eval.reply_index(CONVERSATIONS[3]["turns"]) is None


def test_fixed_prompts_ask_every_task_zero_shot_and_few_shot():
    prompts = sample_eval.fixed_prompts(PROMPT_SPEC, "spec.yaml")
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
    prompts = sample_eval.load_prompt_sets(str(PROMPT_FILE))
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
        sample_eval.fixed_prompts(spec, "spec.yaml")


def test_missing_prompt_file_is_one_line_error(tmp_path):
    with pytest.raises(ChatmillError, match=r"eval.prompt_sets=.*nope.yaml not found"):
        sample_eval.load_prompt_sets(str(tmp_path / "nope.yaml"))


# --- A tiny model ----------------------------------------------------------------------------------


def make_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer((render_text(c, eos_token="") for c in CONVERSATIONS), vocab_size=400)


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
    prompt = sample_eval.heldout_prompts([c], 1)[0]
    full = sample_eval.prompt_ids(tokenizer, prompt, max_tokens=1000)
    assert full == encode_prompt(tokenizer, c, c["turns"][:4])
    shorter = sample_eval.prompt_ids(tokenizer, prompt, max_tokens=len(full) - 1)
    assert len(shorter) < len(full)
    assert shorter == encode_prompt(tokenizer, c, c["turns"][1:4])
    assert tokenizer.decode(shorter).endswith("You: Race you there!\nAria:")


def test_few_shot_drops_the_first_examples_first(tiny):
    tokenizer = tiny[0]
    few = sample_eval.fixed_prompts(PROMPT_SPEC, "spec.yaml")[2]
    full = sample_eval.prompt_ids(tokenizer, few, max_tokens=1000)
    shorter = tokenizer.decode(sample_eval.prompt_ids(tokenizer, few, max_tokens=len(full) - 1))
    assert "Say hi." not in shorter and "Count to three." in shorter
    assert shorter.startswith("Helper's Persona: A helpful assistant.")
    assert shorter.endswith("You: A recipe for tea?\nHelper:")


def test_finish_tells_why_a_reply_ended(tiny):
    tokenizer = tiny[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenizer.encode(" Off we go!", add_special_tokens=False)
    assert generation.finish(tokenizer, ids + [eos, pad, pad], eos, pad) == Reply(
        "Off we go!", len(ids) + 1, "eos"
    )
    assert generation.finish(tokenizer, ids, eos, pad) == Reply("Off we go!", len(ids), "max_tokens")
    turn_ids = ids + tokenizer.encode("\nYou:", add_special_tokens=False)
    reply = generation.finish(tokenizer, turn_ids + [pad], eos, pad)
    assert (reply.text, reply.stop, reply.new_tokens) == ("Off we go!", "turn", len(turn_ids))


def test_batched_left_padded_greedy_matches_one_at_a_time(tiny):
    tokenizer, model, _ = tiny
    prompts = [
        sample_eval.prompt_ids(tokenizer, p, 100) for p in sample_eval.heldout_prompts(CONVERSATIONS, 3)
    ]
    assert len({len(p) for p in prompts}) == 3  # different lengths, so the batch really is padded
    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=generation.NEXT_USER_TURN,
    )
    batched = generation.generate_replies(model, tokenizer, prompts, greedy, batch_size=3)
    single = generation.generate_replies(model, tokenizer, prompts, greedy, batch_size=1)
    assert batched == single
    assert any(reply.text for reply in batched)


def test_top_k_zero_is_off_and_checkpoint_defaults_stay_out(tiny):
    tokenizer, model, _ = tiny
    prompt = torch.tensor([encode_prompt(tokenizer, CONVERSATIONS[0], CONVERSATIONS[0]["turns"][:1])])
    for top_k, kept in ((0, len(tokenizer)), (40, 40)):
        setting = Setting(temperature=1.0, top_p=1.0, top_k=top_k, repetition_penalty=1.0)
        config = generation.generation_config(setting, 3, tokenizer.eos_token_id, tokenizer.pad_token_id)
        config.output_scores, config.return_dict_in_generate = True, True
        scores = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), generation_config=config, tokenizer=tokenizer
        ).scores
        # Tokens that sampling may pick keep a finite score; the checkpoint's top_k=50 and typical_p
        # would leave fewer.
        assert [int(torch.isfinite(step).sum()) for step in scores] == [kept] * len(scores)


def test_eval_loss_keeps_packed_documents_apart(tiny):
    tokenizer, model, _ = tiny
    packed = pack(tokenizer, CONVERSATIONS[:2], seq_len=128)
    alone = [pack(tokenizer, [c], seq_len=128) for c in CONVERSATIONS[:2]]
    counts = [int((a["labels"][:, 1:] != IGNORE_INDEX).sum()) for a in alone]
    losses = [sample_eval.eval_loss(model, a, batch_size=1) for a in alone]
    expected = sum(n * loss for n, loss in zip(counts, losses, strict=True)) / sum(counts)
    assert sample_eval.eval_loss(model, packed, batch_size=1) == pytest.approx(expected, rel=1e-4)


# --- Comparing two runs --------------------------------------------------------------------------


def test_diff_table_lists_headline_metrics_with_the_change():
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
    rows = sample_eval.diff_rows(a, b)
    assert rows == [
        ("eval_loss", 2.0, 1.5),
        ("overall.short_rate", 0.5, 0.25),
        ("prompt_sets.x.short_rate", 0.1, 0.2),
        ("overall.rep_4", None, 0.1),
    ]
    lines = sample_eval.diff_table(rows, ("exp-a", "exp-b")).splitlines()
    assert lines[0].split() == ["metric", "exp-a", "exp-b", "change", "(B", "-", "A)"]
    assert lines[1].split() == ["eval_loss", "2", "1.5", "-0.5"]
    assert lines[4].split() == ["overall.rep_4", "-", "0.1", "-"]


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
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": EVAL_PARAMS}))
    (root / "prompts.yaml").write_text(yaml.safe_dump(PROMPT_SPEC))


def stage_workdir(root: Path, model_folder: Path, tokenizer) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "part-10").symlink_to(model_folder)
    eval_dir = root / "data" / "shards" / "eval"
    save_shard(eval_dir, pack(tokenizer, CONVERSATIONS, seq_len=128))
    write_parquet(eval_dir / "conversations.parquet", CONVERSATION_SCHEMA, CONVERSATIONS)
    write_params(root)
    return root


def run_main(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["sample_eval.py", *args])
    sample_eval.main()


def test_stage_writes_metrics_samples_and_report(tiny, tmp_path, monkeypatch):
    tokenizer, _, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    run_main(monkeypatch)

    metrics = read_json(Path("metrics/sample-eval.json"))
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
    assert all(s["short"] == sample_eval.is_short(s["reply"], 5, s["stop"] == "max_tokens") for s in samples)
    assert all(
        s["acceptable"] == (not s["short"] and not s["repetitive"] and s["stop"] != "max_tokens")
        for s in samples
    )

    page = Path("reports/sample-eval.html").read_bytes().decode()  # as written: a reply may hold "\r"
    assert all(html.escape(s["reply"]) in page for s in samples)
    assert page.count('class="sample"') == 28

    first = [Path(name).read_bytes() for name in ("reports/samples.jsonl", "metrics/sample-eval.json")]
    run_main(monkeypatch)
    again = [Path(name).read_bytes() for name in ("reports/samples.jsonl", "metrics/sample-eval.json")]
    assert again == first  # seeded per setting: reproducible


def test_compare_two_model_folders(tiny, tmp_path, monkeypatch, capsys):
    tokenizer, _, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    save_model(tokenizer, tmp_path / "models" / "other", seed=1)
    run_main(monkeypatch, "--compare", "models/part-10", "models/other")
    out = capsys.readouterr().out
    table = out[out.index("metric ") :].splitlines()
    assert table[0].split()[:3] == ["metric", "models/part-10", "models/other"]
    assert any(line.startswith("overall.short_rate ") for line in table)
    assert any(line.startswith("prompt_sets.few_shot.regens_to_accept ") for line in table)
    page = Path("reports/compare.html").read_text()
    assert "models/other" in page and page.count('class="sample"') == 2 * 28


def test_missing_model_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: sample-eval: models/part-10 not found; run `dvc repro train-part10` or set eval.model\n"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("workspace", "error: compare: the workspace has no metrics/sample-eval.json; run `dvc repro"),
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
    with pytest.raises(SystemExit):
        run_main(monkeypatch, "--compare", source, source)
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1


@pytest.mark.e2e
def test_compare_two_dvc_experiments(tmp_path, monkeypatch, capsys):
    """Two experiments of a stand-in stage that writes sample-eval's outputs: compare reads each from the
    DVC cache by experiment name."""
    monkeypatch.chdir(tmp_path)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "t")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "t@example.com")
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}:{Path(shutil.which('git')).parent}:/usr/bin:/bin"
    )
    Path("rows.json").write_text(json.dumps([row(f"p{index}") for index in range(4)]))
    Path("write.py").write_text(
        "import json, yaml\n"
        "rate = yaml.safe_load(open('params.yaml'))['rate']\n"
        "rows = [{**r, 'short': i < rate * 4} for i, r in enumerate(json.load(open('rows.json')))]\n"
        "open('reports/samples.jsonl', 'w').write(''.join(json.dumps(r) + '\\n' for r in rows))\n"
        "metrics = {'eval_loss': 1.0, 'overall': {'short_rate': rate}}\n"
        "json.dump(metrics, open('metrics/sample-eval.json', 'w'))\n"
    )
    Path("params.yaml").write_text("rate: 0.25\n")
    Path("dvc.yaml").write_text(
        "stages:\n  sample-eval:\n    cmd: mkdir -p reports metrics && python write.py\n"
        "    deps: [write.py, rows.json]\n    params: [rate]\n    outs: [reports/samples.jsonl]\n"
        "    metrics: [metrics/sample-eval.json]\n"
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
    run_main(monkeypatch, "--compare", "HEAD", "half")
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["overall.short_rate", "0.25", "0.5", "+0.25"]
    assert Path("reports/compare.html").read_text().count('class="sample"') == 8
