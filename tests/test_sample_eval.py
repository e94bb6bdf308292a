import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import sample_eval
import torch
import yaml
from base_model import train_tokenizer
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from chatmill.errors import ChatmillError
from chatmill.io import read_json, write_parquet
from chatmill.prompt import encode_header, encode_prompt, encode_turn, render_text
from chatmill.schema import CONVERSATION_SCHEMA, make_conversation
from chatmill.shards import IGNORE_INDEX, save_shard

GRID = [
    {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1},
    {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0},
]


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


# --- Reply metrics -------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", ["...", "Yes.", "Hm?", "", "  ?! ", "*nods*"])
def test_ultra_short_replies_are_short_whatever_short_words_says(reply):
    assert sample_eval.is_short(reply, short_words=0)


def test_short_words_threshold():
    assert sample_eval.is_short("I do not know", short_words=5)
    assert not sample_eval.is_short("I really do not know", short_words=5)
    assert not sample_eval.is_short("Oh well.", short_words=0)


def test_words_ignore_punctuation_and_keep_contractions():
    assert sample_eval.words("Don't... go, Bob!") == ["don't", "go", "bob"]


def test_distinct_2_counts_bigrams_within_replies():
    # "a b c" -> (a,b) (b,c); "a b" -> (a,b); no bigram across the two replies
    assert sample_eval.distinct_2(["a b c", "A b."]) == pytest.approx(2 / 3)
    assert sample_eval.distinct_2(["...", "Yes."]) == 0.0


def test_reply_metrics():
    metrics = sample_eval.reply_metrics(
        ["...", "Hm?", "one two three four five six", "a b c d"], short_words=5
    )
    assert metrics == {"n_replies": 4, "short_rate": 0.75, "median_words": 2.5, "distinct_2": 1.0}


def test_sample_metrics_pool_all_settings_for_overall():
    samples = [
        {"setting": "a", "reply": "Yes."},
        {"setting": "b", "reply": "I would love to come along with you"},
        {"setting": "a", "reply": "Let us go to the lake today"},
    ]
    metrics = sample_eval.sample_metrics(samples, short_words=5)
    assert list(metrics["settings"]) == ["a", "b"]
    assert metrics["settings"]["a"]["n_replies"] == 2 and metrics["settings"]["a"]["short_rate"] == 0.5
    assert metrics["overall"]["n_replies"] == 3 and metrics["overall"]["short_rate"] == pytest.approx(
        1 / 3, abs=1e-6
    )


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


# --- Prompts -------------------------------------------------------------------------------------


def test_selected_conversations_reply_to_their_last_user_turn():
    selected = sample_eval.select_conversations(reversed(CONVERSATIONS), count=10)
    assert [c["id"] for c in selected] == sorted(c["id"] for c in CONVERSATIONS[:3])
    reply_at = {c["id"]: sample_eval.reply_index(c["turns"]) for c in selected}
    # conversation 2 ends with an unanswered user turn: its reply is the oak one
    assert [reply_at[c["id"]] for c in CONVERSATIONS[:3]] == [1, 2, 4]
    assert sample_eval.reply_index(CONVERSATIONS[3]["turns"]) is None


# --- A tiny model ----------------------------------------------------------------------------------


def make_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer((render_text(c, eos_token="") for c in CONVERSATIONS), vocab_size=400)


def make_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
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
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def pack(tokenizer, conversations: list[dict], seq_len: int) -> dict[str, np.ndarray]:
    """Each conversation one document, two documents per sequence, as the shard stage packs them."""
    documents = []
    for c in conversations:
        encoded = encode_header(tokenizer, c)
        for t in c["turns"]:
            encoded = encoded + encode_turn(tokenizer, t, c["bot_name"])
        documents.append(encoded)
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokenizer, folder = make_tokenizer(), tmp_path_factory.mktemp("model") / "part-10"
    model = make_model(tokenizer)
    # Defaults a checkpoint may ship with; sample-eval must not let them in.
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=50, typical_p=0.5, no_repeat_ngram_size=2
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer, sample_eval.load_model(folder, "cpu"), folder


def test_prompt_drops_oldest_turns_to_fit(tiny):
    tokenizer = tiny[0]
    c = CONVERSATIONS[2]
    full = sample_eval.prompt_ids(tokenizer, c, max_tokens=1000)
    assert full == encode_prompt(tokenizer, c, c["turns"][:4])
    shorter = sample_eval.prompt_ids(tokenizer, c, max_tokens=len(full) - 1)
    assert len(shorter) < len(full)
    assert shorter == encode_prompt(tokenizer, c, c["turns"][1:4])
    assert tokenizer.decode(shorter).endswith("You: Race you there!\nAria:")


def test_batched_left_padded_greedy_matches_one_at_a_time(tiny):
    tokenizer, model, _ = tiny
    prompts = [sample_eval.prompt_ids(tokenizer, c, 100) for c in CONVERSATIONS[:3]]
    assert len({len(p) for p in prompts}) == 3  # different lengths, so the batch really is padded
    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    batched = list(sample_eval.generate_replies(model, tokenizer, prompts, greedy, batch_size=3))
    single = list(sample_eval.generate_replies(model, tokenizer, prompts, greedy, batch_size=1))
    assert batched == single
    assert any(batched)


def test_top_k_zero_is_off_and_checkpoint_defaults_stay_out(tiny):
    tokenizer, model, _ = tiny
    prompt = torch.tensor([sample_eval.prompt_ids(tokenizer, CONVERSATIONS[0], 100)])
    for top_k, kept in ((0, len(tokenizer)), (40, 40)):
        setting = sample_eval.Setting(temperature=1.0, top_p=1.0, top_k=top_k, repetition_penalty=1.0)
        config = sample_eval.generation_config(setting, 3, tokenizer.eos_token_id, tokenizer.pad_token_id)
        config.output_scores, config.return_dict_in_generate = True, True
        scores = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), generation_config=config
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


# --- The stage -----------------------------------------------------------------------------------


EVAL_PARAMS = {
    "model": "models/part-10",
    "prompts": 3,
    "max_new_tokens": 8,
    "batch_size": 2,
    "short_words": 5,
    "seed": 0,
    "grid": GRID,
}


def write_params(root: Path) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": EVAL_PARAMS}))


def stage_workdir(root: Path, model_folder: Path, tokenizer) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "part-10").symlink_to(model_folder)
    eval_dir = root / "data" / "shards" / "eval"
    save_shard(eval_dir, pack(tokenizer, CONVERSATIONS, seq_len=128))
    write_parquet(eval_dir / "conversations.parquet", CONVERSATION_SCHEMA, CONVERSATIONS)
    write_params(root)
    return root


def test_stage_writes_metrics_and_samples(tiny, tmp_path, monkeypatch):
    tokenizer, _, folder = tiny
    monkeypatch.chdir(stage_workdir(tmp_path, folder, tokenizer))
    sample_eval.main()

    metrics = read_json(Path("metrics/sample-eval.json"))
    assert set(metrics) == {"eval_loss", "perplexity", "overall", "settings"}
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-5)
    assert list(metrics["settings"]) == ["t0.7-p0.9-k40-r1.1", "t1.0-p1.0-k0-r1.0"]
    for setting in metrics["settings"].values():
        assert set(setting) == {"n_replies", "short_rate", "median_words", "distinct_2"}
        assert setting["n_replies"] == 3
    assert metrics["overall"]["n_replies"] == 6

    samples = [json.loads(line) for line in Path("reports/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    assert samples[0].keys() == {
        "setting", "temperature", "top_p", "top_k", "repetition_penalty", "conversation_id",
        "bot_name", "prompt", "reply", "words", "short",
    }  # fmt: skip
    assert {s["conversation_id"] for s in samples} == {c["id"] for c in CONVERSATIONS[:3]}
    assert all(s["prompt"].endswith("\nAria:") for s in samples)

    first = Path("reports/samples.jsonl").read_bytes()
    sample_eval.main()
    assert Path("reports/samples.jsonl").read_bytes() == first  # seeded per setting: reproducible


def test_missing_model_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sample_eval.main()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: sample-eval: models/part-10 not found; run `dvc repro train-part10` or set eval.model\n"
    )
