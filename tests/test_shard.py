import pytest
from shard import Packer, encode_conversation, part_sizes, windows

from chatmill.errors import ChatmillError
from chatmill.prompt import Encoded
from chatmill.shards import IGNORE_INDEX


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


def test_packing_restarts_positions_per_window_and_pads_with_ignored_labels():
    sequences = []
    packer = Packer(seq_len=16, pad_id=0, sink=sequences.append)
    for window in (encoded(10, True), encoded(9, True), encoded(5, True)):
        packer.add(window)
    packer.flush()
    assert len(sequences) == 2  # first fit: the 5-token window joins the first sequence
    first = sequences[0]
    assert first["position_ids"] == list(range(10)) + list(range(5)) + [0]
    assert first["labels"][-1] == IGNORE_INDEX and first["length"] == 15
    assert sequences[1]["position_ids"][:9] == list(range(9))


def test_parts_are_whole_global_batches_of_equal_size():
    assert part_sizes(1000, 10, 16) == 96
    with pytest.raises(ChatmillError, match="cannot fill 10 parts"):
        part_sizes(100, 10, 16)


def test_packed_document_sees_nothing_of_its_neighbours(tiny_tokenizer):
    """Logits of a window packed after another equal those of the window alone."""
    import torch
    from base_model import scratch_model

    sizes = {
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 64,
    }
    model = scratch_model(sizes, tiny_tokenizer, seed=0).eval()
    a, b = torch.arange(3, 15), torch.arange(20, 29)
    packed_ids = torch.cat([a, b]).unsqueeze(0)
    positions = torch.cat([torch.arange(len(a)), torch.arange(len(b))]).unsqueeze(0)
    with torch.no_grad():
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0, len(a) :]
        alone = model(input_ids=b.unsqueeze(0), use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def run_shard(workdir, workers: int, tokenizer, conversations) -> dict[str, str]:
    """Run the real stage in `workdir`; return the sha256 of every output file."""
    import shard as shard_stage
    import yaml
    from base_model import scratch_model

    from chatmill.io import sha256_file, write_parquet
    from chatmill.schema import CONVERSATION_SCHEMA

    if not (workdir / "models/base").exists():
        sizes = {
            "vocab_size": 300,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        }
        tokenizer.save_pretrained(workdir / "models/base")
        scratch_model(sizes, tokenizer, seed=0).save_pretrained(workdir / "models/base")
        (workdir / "data/mixed").mkdir(parents=True)
        write_parquet(workdir / "data/mixed/conversations.parquet", CONVERSATION_SCHEMA, conversations)
    params = {
        "shard": {"seq_len": 64, "eval_fraction": 0.1, "seed": 0, "workers": workers},
        "train": {"parts": 2, "global_batch": 2},
    }
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    shard_stage.main()
    return {
        str(path.relative_to(workdir)): sha256_file(path)
        for path in sorted((workdir / "data/shards").rglob("*"))
        if path.is_file()
    }


def test_output_is_byte_identical_for_one_and_two_workers(
    tmp_path, monkeypatch, tiny_tokenizer, conversation_factory
):
    monkeypatch.setattr("shard.ENCODE_BATCH", 7)  # many batches, so order across workers matters
    conversations = [
        conversation_factory(f"c{i:03d}", bot_replies=("Hello there.",) * (1 + i % 4), user=f"Hi number {i}.")
        for i in range(120)
    ]
    monkeypatch.chdir(tmp_path)
    one = run_shard(tmp_path, 1, tiny_tokenizer, conversations)
    two = run_shard(tmp_path, 2, tiny_tokenizer, conversations)
    assert one == two and len(one) >= 10
