"""Every base architecture the presets and docs name trains packed and exact: GPT-J (experiment 7's),
GPT-NeoX (Pythia), Llama, Mistral and Qwen2, built tiny from config on the CPU. For each, the
attention train gives it, a packed document's logits and loss equal the document's alone under
plain causal (eager) attention, and the start-up check that stops a leaking attention. The same
matrix through the real stages (train-part1, sample-eval, the release) is in test_end_to_end.py."""

import pytest
import torch
from conftest import ARCHITECTURES, gpt2_bpe_tokenizer, tiny_base

from chatmill import attention
from chatmill.errors import ChatmillError
from chatmill.shards import IGNORE_INDEX

CPU = torch.device("cpu")
# The attention train-partN gives each architecture on the CPU: for rows of 256 and of 2048 tokens.
EXPECTED = {
    "gptj": ("eager", "eager"),  # GPT-J does not take transformers' attention interface
    "gpt-neox": ("sdpa", attention.VARLEN),
    "llama": ("sdpa", attention.VARLEN),
    "mistral": ("sdpa", attention.VARLEN),
    "qwen2": ("sdpa", attention.VARLEN),
}


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_bpe_tokenizer()


def packed_row(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three documents in one row (ids, position ids), and the last one alone."""
    generator = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, vocab_size, (n,), generator=generator) for n in (37, 18, 29)]
    ids = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(doc)) for doc in docs])[None]
    return ids, positions, docs[-1][None]


def labels_of_last(ids: torch.Tensor, last_length: int) -> torch.Tensor:
    """The loss on the last document only, its first token excluded (its context would be the
    document before)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -last_length + 1 :] = ids[0, -last_length + 1 :]
    return labels


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("seq_len", [256, 2048])
def test_a_packed_document_gets_the_logits_and_loss_it_gets_alone(tokenizer, architecture, seq_len):
    model = tiny_base(architecture, tokenizer, max_positions=seq_len).eval()
    reference = tiny_base(architecture, tokenizer, max_positions=seq_len).eval()
    if reference.config._attn_implementation != "eager":
        reference.set_attn_implementation("eager")  # the plain causal attention, one document
    used = attention.use_packed_attention(model, CPU, bf16=False, seq_len=seq_len)
    assert used == EXPECTED[architecture][seq_len == 2048]
    assert model.config._attn_implementation == used

    ids, positions, last = packed_row(len(tokenizer))
    inputs = {"input_ids": ids, "position_ids": positions, "labels": labels_of_last(ids, last.shape[1])}
    if used == attention.VARLEN:  # as training passes them
        inputs["cu_seq_lens_q"] = attention.document_starts(positions)
    with torch.no_grad():
        packed = model(**inputs, use_cache=False)
        alone = reference(input_ids=last, labels=labels_of_last(last, last.shape[1]), use_cache=False)
    torch.testing.assert_close(packed.logits[0, -last.shape[1] :], alone.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.loss, alone.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_start_up_check_passes_the_attention_training_uses(tokenizer, architecture):
    model = tiny_base(architecture, tokenizer, max_positions=2048).eval()
    used = attention.use_packed_attention(model, CPU, bf16=False, seq_len=2048)
    attention.check_packing(
        lambda **inputs: model(**inputs, use_cache=False).logits, model, used, torch.float32, CPU
    )


def test_a_sliding_window_shorter_than_the_rows_keeps_the_window(tokenizer):
    """varlen attends to the whole document; a Mistral whose window is shorter than the rows gets
    sdpa, whose mask applies the window, and stays exact."""
    model = tiny_base("mistral", tokenizer, max_positions=2048, sliding_window=16).eval()
    reference = tiny_base("mistral", tokenizer, max_positions=2048, sliding_window=16).eval()
    reference.set_attn_implementation("eager")
    assert attention.use_packed_attention(model, CPU, bf16=False, seq_len=2048) == "sdpa"
    ids, positions, last = packed_row(len(tokenizer))
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, -last.shape[1] :]
        alone = reference(input_ids=last, use_cache=False).logits[0]
        full = tiny_base("mistral", tokenizer, max_positions=2048, sliding_window=None).eval()
        unwindowed = full(input_ids=last, use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert (alone - unwindowed).abs().max() > 1e-3  # the window matters for this document


def leaking_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention over the whole row, documents ignored: what packing must never do."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, is_causal=True, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2), None


def test_an_attention_that_lets_documents_see_each_other_stops_training_with_one_line(tokenizer):
    from transformers import AttentionInterface

    AttentionInterface.register("leaking_for_test", leaking_attention)
    model = tiny_base("llama", tokenizer).eval()
    model.set_attn_implementation("leaking_for_test")
    with pytest.raises(ChatmillError) as error:
        attention.check_packing(
            lambda **inputs: model(**inputs, use_cache=False).logits,
            model,
            "leaking_for_test",
            torch.float32,
            CPU,
        )
    message = str(error.value)
    assert message.startswith("train: LlamaForCausalLM with leaking_for_test attention lets packed documents")
    assert "set model.base to a model of another architecture" in message and "\n" not in message
