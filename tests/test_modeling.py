import pytest

from chatmill.errors import ChatmillError
from chatmill.modeling import pretrained, scratch_model, train_tokenizer


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
