import copy

import numpy as np
import pytest
from conftest import run_stage, write_workspace

from chatmill.errors import ChatmillError
from chatmill.io import read_json
from chatmill.packing import Packer, SequenceFile, load_tokenizer, part_sizes, windows
from chatmill.prompt import Encoded, encode_conversation, prepare_tokenizer
from chatmill.shards import ARRAYS, IGNORE_INDEX, load_shard, save_shard


def encoded(n: int, supervised: bool, start: int = 1) -> Encoded:
    return Encoded(list(range(start, start + n)), [supervised] * n)


def test_loss_is_on_bot_text_and_end_of_turn_only(tiny_tokenizer, conversation_factory):
    conversation = conversation_factory("a", bot_replies=("Hello there.", "Welcome back."))
    header, turns = encode_conversation(tiny_tokenizer, conversation)
    assert not any(header.supervised)
    user, bot = turns[0], turns[1]
    assert not any(user.supervised)
    supervised_ids = [t for t, s in zip(bot.ids, bot.supervised, strict=True) if s]
    assert supervised_ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(supervised_ids[:-1]) == " Hello there."
    # "Mira:" before the reply and the newline after it are context, not targets
    assert (
        tiny_tokenizer.decode([t for t, s in zip(bot.ids, bot.supervised, strict=True) if not s]) == "Mira:\n"
    )


def test_all_bot_turns_of_a_conversation_go_in_one_window_when_they_fit(tiny_tokenizer, conversation_factory):
    conversation = conversation_factory("a", bot_replies=("One.", "Two.", "Three."))
    header, turns = encode_conversation(tiny_tokenizer, conversation)
    result, truncated = windows(header, turns, seq_len=512)
    assert len(result) == 1 and truncated == 0
    assert result[0].ids.count(tiny_tokenizer.eos_token_id) == 3


def test_long_conversations_are_cut_at_turn_boundaries_and_repeat_the_header():
    header = encoded(4, False, start=100)
    turns = [encoded(5, False), encoded(6, True), encoded(5, False), encoded(6, True)]
    result, truncated = windows(header, turns, seq_len=16)
    assert truncated == 0
    assert [len(w) for w in result] == [15, 15]
    assert all(w.ids[:4] == header.ids for w in result)


def test_windows_without_a_bot_turn_are_dropped_and_overlong_turns_truncated():
    header = encoded(4, False, start=100)
    result, truncated = windows(header, [encoded(30, True), encoded(5, False)], seq_len=16)
    assert truncated == 1 and len(result) == 1 and len(result[0]) == 16


def window(n: int, supervised: bool, start: int = 1) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(start, start + n, dtype=np.int32)
    return ids, ids if supervised else np.full(n, IGNORE_INDEX, dtype=np.int32)


def test_packing_restarts_positions_per_window_and_pads_with_ignored_labels():
    sequences = []
    packer = Packer(seq_len=16, pad_id=0, sink=sequences.append)
    for packed in (window(10, True), window(9, True, start=50), window(5, False)):
        packer.add(packed)
    packer.flush()
    assert len(sequences) == 2  # first fit: the 5-token window joins the first sequence
    first = sequences[0]
    assert first["input_ids"].tolist() == list(range(1, 11)) + list(range(1, 6)) + [0]
    assert first["labels"].tolist() == list(range(1, 11)) + [IGNORE_INDEX] * 6
    assert first["position_ids"].tolist() == list(range(10)) + list(range(5)) + [0]
    assert first["length"] == 15
    assert sequences[1]["position_ids"].tolist() == list(range(9)) + list(range(7))


def test_sequence_file_writes_what_save_shard_writes_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr("chatmill.packing.COPY_ROWS", 3)  # several chunks per part
    rng = np.random.default_rng(0)
    rows = [
        {
            "input_ids": rng.integers(0, 300, 8, dtype=np.int32),
            "labels": rng.choice(np.array([IGNORE_INDEX, 7], dtype=np.int32), 8),
            "position_ids": np.arange(8, dtype=np.int32),
            "length": int(rng.integers(1, 9)),
        }
        for _ in range(10)
    ]
    work = SequenceFile(tmp_path / "work", seq_len=8)
    for row in rows:
        work(row)
    work.close()
    stats = work.save(range(2, 9), tmp_path / "part")
    expected = {name: np.stack([row[name] for row in rows[2:9]]) for name in ARRAYS}
    save_shard(tmp_path / "reference", expected)
    for name in ARRAYS:
        assert (tmp_path / "part" / f"{name}.npy").read_bytes() == (
            tmp_path / "reference" / f"{name}.npy"
        ).read_bytes()
    assert load_shard(tmp_path / "part")["labels"].shape == (7, 8)
    unpadded = sum(row["length"] for row in rows[2:9])
    assert stats == {
        "sequences": 7,
        "tokens": 56,
        "supervised_tokens": int((expected["labels"] != IGNORE_INDEX).sum()),
        "padding_fraction": round(1 - unpadded / 56, 6),
    }


def test_parts_are_whole_global_batches_of_equal_size():
    assert part_sizes(1000, 10, 16) == 96
    with pytest.raises(ChatmillError, match="cannot fill 10 parts"):
        part_sizes(100, 10, 16)


def run_shard(
    workdir, workers: int, tokenizer, scratch: dict, conversations, prompt_format: str = "pygmalion"
) -> dict[str, str]:
    """Run the real stage in `workdir` (its params.yaml and dvc.yaml written there); return the
    sha256 of every output file."""
    from chatmill.io import sha256_file, write_parquet
    from chatmill.modeling import scratch_model
    from chatmill.schema import CONVERSATION_SCHEMA

    if not (workdir / "models/base").exists():
        tokenizer.save_pretrained(workdir / "models/base")
        scratch_model(scratch, tokenizer, seed=0).save_pretrained(workdir / "models/base")
        (workdir / "data/mixed").mkdir(parents=True)
        write_parquet(workdir / "data/mixed/conversations.parquet", CONVERSATION_SCHEMA, conversations)
    params = {
        "shard": {"seq_len": 64, "eval_fraction": 0.1, "seed": 0, "workers": workers},
        "train": {"parts": 2, "global_batch": 2},
        "prompt": {"format": prompt_format},
    }
    write_workspace(workdir, params)
    load_tokenizer.cache_clear()  # per process, by path: models/base of an earlier test's workdir
    run_stage("shard")
    return {
        str(path.relative_to(workdir)): sha256_file(path)
        for path in sorted((workdir / "data/shards").rglob("*"))
        if path.is_file()
    }


def test_output_is_byte_identical_for_one_and_two_workers(
    tmp_path, monkeypatch, tiny_tokenizer, tiny_scratch, conversation_factory
):
    monkeypatch.setattr("chatmill.packing.ENCODE_BATCH", 7)  # many batches, so order across workers matters
    conversations = [
        conversation_factory(f"c{i:03d}", bot_replies=("Hello there.",) * (1 + i % 4), user=f"Hi number {i}.")
        for i in range(120)
    ]
    monkeypatch.chdir(tmp_path)
    one = run_shard(tmp_path, 1, tiny_tokenizer, tiny_scratch, conversations)
    two = run_shard(tmp_path, 2, tiny_tokenizer, tiny_scratch, conversations)
    assert one == two and len(one) >= 10


def test_an_up_sampled_eval_conversation_is_held_out_once(
    tmp_path, monkeypatch, tiny_tokenizer, tiny_scratch, conversation_factory
):
    import pyarrow.parquet as pq

    monkeypatch.setattr("chatmill.packing.ENCODE_BATCH", 5)
    conversations = [conversation_factory(f"c{i:03d}", user=f"Hi number {i}.") for i in range(80)]
    monkeypatch.chdir(tmp_path)
    run_shard(
        tmp_path, 1, tiny_tokenizer, tiny_scratch, conversations * 2
    )  # every conversation twice, as up-sampling does
    held_out = pq.read_table(tmp_path / "data/shards/eval/conversations.parquet").to_pylist()
    stats = read_json(tmp_path / "data/shards/stats.json")
    assert held_out and [row["id"] for row in held_out] == sorted({row["id"] for row in held_out})
    assert held_out == [row for row in conversations if row["id"] in {r["id"] for r in held_out}]
    assert stats["dropped"] == {"eval_repeat": len(held_out)} and stats["eval_conversations"] == len(held_out)


def said(capsys) -> list[str]:
    """The stage's error and warning lines (transformers' progress bars aside)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "warning:"))]


def test_shard_encodes_in_the_format_models_base_was_made_for(
    tmp_path, monkeypatch, tiny_tokenizer, tiny_scratch, conversation_factory
):
    """ChatML: the supervised tokens of every window are replies, each ending with <|im_end|>."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    prepare_tokenizer(tokenizer, "chatml", "Assistant")
    conversations = [conversation_factory(f"c{i:03d}", user=f"Hi number {i}.") for i in range(40)]
    monkeypatch.chdir(tmp_path)
    scratch = tiny_scratch | {"vocab_size": len(tokenizer)}
    run_shard(tmp_path, 1, tokenizer, scratch, conversations, prompt_format="chatml")
    shard = load_shard(tmp_path / "data/shards/part-01")
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    labels = shard["labels"][shard["labels"] != IGNORE_INDEX].tolist()
    replies = tokenizer.decode(labels).split("<|im_end|>")
    assert replies[-1] == "" and set(replies[:-1]) == {"Hello there, traveller."}
    assert (
        im_start in shard["input_ids"] and im_start not in labels and labels.count(im_end) == len(replies) - 1
    )


def test_shard_refuses_a_models_base_made_for_another_format(
    tmp_path, monkeypatch, tiny_tokenizer, tiny_scratch, conversation_factory, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_shard(
            tmp_path, 1, tiny_tokenizer, tiny_scratch, [conversation_factory("a")], prompt_format="chatml"
        )
    assert said(capsys) == [
        "error: shard: models/base was made for prompt.format: pygmalion, but params.yaml has prompt.format: "
        "chatml; run `dvc repro base-model`"
    ]
    assert not (tmp_path / "data/shards").exists()


def test_conversations_the_base_template_refuses_are_dropped_with_the_reason(
    tmp_path, monkeypatch, tiny_tokenizer, tiny_scratch, conversation_factory, capsys
):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (  # ChatML that refuses a word
        "{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('a forbidden word') }}"
        "{% endif %}{{ '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
    )
    prepare_tokenizer(tokenizer, "base", "Assistant")
    conversations = [
        conversation_factory(f"c{i:03d}", user="a forbidden word" if i % 10 == 3 else f"Hi number {i}.")
        for i in range(60)
    ]
    monkeypatch.chdir(tmp_path)
    run_shard(tmp_path, 1, tokenizer, tiny_scratch, conversations, prompt_format="base")
    stats = read_json(tmp_path / "data/shards/stats.json")
    assert stats["dropped"] == {"chat_template_refused": 6}
    assert stats["in"] == 60 == stats["out"] + 6
    assert said(capsys) == [
        "warning: shard: dropped 6 conversations that the chat template of models/base refuses "
        "(stats.json: chat_template_refused); the first: c003: the chat template refuses it "
        "(a forbidden word)"
    ]
