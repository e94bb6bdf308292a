import pytest
import torch

from chatmill.errors import ChatmillError
from chatmill.modeling import build_base, pretrained, scratch_model, train_tokenizer


def test_tokenizer_training_is_deterministic_and_has_the_special_tokens(tiny_tokenizer):
    texts = [
        "Mira's Persona: A kind innkeeper.\nScenario: \n<START>\nYou: Hi.\nMira: Hello there, traveller."
    ] * 20
    again = train_tokenizer(iter(texts), vocab_size=300)
    assert again.get_vocab() == tiny_tokenizer.get_vocab()
    assert (tiny_tokenizer.eos_token, tiny_tokenizer.pad_token) == ("</s>", "<pad>")
    text = "Grüße, {{char}}! 🎲"  # byte-level: nothing maps to an unknown token
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text, add_special_tokens=False)) == text


def test_scratch_model_is_seeded_and_sized_to_the_vocabulary(tiny_tokenizer, tiny_scratch):
    first, second = (
        scratch_model(tiny_scratch, tiny_tokenizer, seed=0),
        scratch_model(tiny_scratch, tiny_tokenizer, seed=0),
    )
    assert first.config.vocab_size == len(tiny_tokenizer)
    assert first.config.eos_token_id == tiny_tokenizer.eos_token_id
    assert all((a == b).all() for a, b in zip(first.parameters(), second.parameters(), strict=True))


def test_a_local_base_model_loads_and_gets_a_pad_token(tmp_path, tiny_tokenizer, tiny_scratch):
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>")
    tokenizer.save_pretrained(tmp_path)
    scratch_model(tiny_scratch, tiny_tokenizer, seed=0).save_pretrained(tmp_path)
    loaded_tokenizer, model = pretrained(str(tmp_path), "main")
    assert loaded_tokenizer.pad_token == "</s>"  # packing pads with it; it is never a target
    assert model.config.vocab_size == len(tiny_tokenizer)


def test_an_unknown_base_model_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch it
    with pytest.raises(ChatmillError, match="base-model: cannot load model.base='no-such/model'"):
        pretrained("no-such/model", "main")


def local_base(folder, tiny_tokenizer, tiny_scratch, vocab_size: int | None = None):
    """A pretrained base in a local folder: tiny_tokenizer (no ChatML tokens) and a model whose
    embeddings have `vocab_size` rows (default: exactly the vocabulary)."""
    tiny_tokenizer.save_pretrained(folder)
    model = scratch_model(tiny_scratch, tiny_tokenizer, seed=0)
    if vocab_size is not None:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    model.save_pretrained(folder)
    return model


def test_a_pretrained_base_gets_the_chatml_tokens_and_room_for_them(
    tmp_path, tiny_tokenizer, tiny_scratch, capsys
):
    original = local_base(tmp_path, tiny_tokenizer, tiny_scratch)
    params = {"base": str(tmp_path), "revision": "main"}
    tokenizer, model = build_base(params, tmp_path / "unused.parquet", "chatml")
    out = capsys.readouterr().out
    before, after = len(tiny_tokenizer), len(tiny_tokenizer) + 2
    assert out == (
        f"base-model: added <|im_start|>, <|im_end|> to the tokenizer of {tmp_path} as special tokens for "
        f"prompt.format: chatml; embeddings resized from {before} to {after} rows\n"
    )
    rows = model.get_input_embeddings().weight
    assert len(tokenizer) == len(tiny_tokenizer) + 2 == rows.shape[0] == model.config.vocab_size
    assert torch.equal(rows[: len(tiny_tokenizer)], original.get_input_embeddings().weight)  # old rows kept
    _, again = build_base(params, tmp_path / "unused.parquet", "chatml")
    assert torch.equal(again.get_input_embeddings().weight, rows)  # the new rows are seeded: same every run
    assert (
        tokenizer.init_kwargs["chatmill_prompt_format"] == "chatml"
        and "<|im_start|>" in tokenizer.chat_template
    )


def test_a_base_with_spare_embedding_rows_is_not_resized(tmp_path, tiny_tokenizer, tiny_scratch, capsys):
    local_base(tmp_path, tiny_tokenizer, tiny_scratch, vocab_size=len(tiny_tokenizer) + 8)  # as GPT-J's
    tokenizer, model = build_base({"base": str(tmp_path), "revision": "main"}, tmp_path / "unused", "chatml")
    assert capsys.readouterr().out.endswith(
        f"the embeddings have room for them ({len(tiny_tokenizer) + 8} rows)\n"
    )
    assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer) + 8


def test_pygmalion_adds_no_tokens_and_writes_its_template(tmp_path, tiny_tokenizer, tiny_scratch, capsys):
    local_base(tmp_path, tiny_tokenizer, tiny_scratch)
    tokenizer, _ = build_base({"base": str(tmp_path), "revision": "main"}, tmp_path / "unused", "pygmalion")
    assert capsys.readouterr().out == "" and len(tokenizer) == len(tiny_tokenizer)
    assert "<START>" in tokenizer.chat_template and "generation" in tokenizer.chat_template


def test_the_chatml_scratch_tokenizer_has_its_markers_as_special_tokens():
    texts = ["system\nMira's Persona: A kind innkeeper.\nuser\nHi.\nassistant\nHello there."] * 20
    tokenizer = train_tokenizer(
        iter(texts), vocab_size=300, extra_special_tokens=("<|im_start|>", "<|im_end|>")
    )
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]) == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert (
        tokenizer.decode(
            tokenizer("<|im_end|>hi", add_special_tokens=False)["input_ids"], skip_special_tokens=True
        )
        == "hi"
    )
