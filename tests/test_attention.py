"""Packing is exact: a document packed with others gets the logits and loss it gets alone.

On each attention train can use (chatmill/attention.packed_attention): varlen as causal SDPA per
document on the CPU (long rows) and as the flash-attention varlen kernel on CUDA in bf16;
transformers' sdpa with the block-diagonal mask from restarting position_ids, on the CPU (short
rows) and on CUDA in fp32.
The GPU tests skip without CUDA; `make bench-gpu` runs them on a GPU machine.
"""

import pytest
import torch

from chatmill import attention
from chatmill.modeling import scratch_model
from chatmill.shards import IGNORE_INDEX

SIZES = {
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in current Llamas
    "max_position_embeddings": 128,
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make bench-gpu runs it)")


def packed_and_alone(model, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Three documents packed in one row and the last one alone; the loss is on the last one only.
    Returns (packed logits of the last document, its logits alone, packed loss, loss alone)."""
    generator = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 300, (n,), generator=generator) for n in (37, 18, 29)]
    ids = torch.cat(docs).unsqueeze(0).to(device)
    positions = torch.cat([torch.arange(len(d)) for d in docs]).unsqueeze(0).to(device)
    last = docs[-1].to(device)
    # A document's first token is never a target (in shards it is the header): predicting it would
    # take the previous document's last token as context.
    alone_labels = last.clone().unsqueeze(0)
    alone_labels[0, 0] = IGNORE_INDEX
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -len(last) :] = alone_labels
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False)
        alone = model(input_ids=last.unsqueeze(0), labels=alone_labels, use_cache=False)
    return packed.logits[0, -len(last) :].float(), alone.logits[0].float(), packed.loss, alone.loss


def test_document_starts_split_rows_where_positions_restart():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5], [7, 8, 0, 0, 0, 0]])
    assert attention.document_starts(positions).tolist() == [0, 3, 5, 6, 12, 14, 15, 16, 17, 18]


def test_packed_attention_picks_per_device_precision_and_row_length():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attention.packed_attention(cpu, False, seq_len=256) == "sdpa"  # short rows: the mask is cheap
    assert attention.packed_attention(cpu, True, seq_len=2048) == attention.VARLEN
    assert attention.packed_attention(cuda, False, seq_len=2048) == "sdpa"  # flash needs half precision


def test_cpu_sdpa_packing_is_exact(tiny_tokenizer):
    model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval()
    packed, alone, packed_loss, alone_loss = packed_and_alone(model, torch.device("cpu"))
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)


def test_cpu_varlen_packing_is_exact(tiny_tokenizer):
    """The attention train uses on the CPU: causal SDPA per document (chatmill/attention.py), packed,
    against an independent reference: the same weights with transformers' eager attention (plain
    softmax(QK^T)V under a causal mask, no SDPA, no chatmill code) on the document alone."""
    model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval()
    reference = scratch_model(SIZES, tiny_tokenizer, seed=0).eval()
    model.set_attn_implementation(attention.packed_attention(torch.device("cpu"), False, seq_len=2048))
    reference.set_attn_implementation("eager")
    assert model.config._attn_implementation == attention.VARLEN
    assert reference.config._attn_implementation == "eager"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(), strict=True))
    packed, _, packed_loss, _ = packed_and_alone(model, torch.device("cpu"))
    _, alone, _, alone_loss = packed_and_alone(reference, torch.device("cpu"))
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)


def test_cpu_varlen_packing_in_bf16_is_exact_to_bf16_rounding(tiny_tokenizer):
    """The CPU path in bf16 (train.bf16 with train.gpus 0, as a CPU run of a GPU preset): a packed
    document's logits equal the document's alone to bf16 rounding, as training checks at start-up."""
    model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval().to(torch.bfloat16)
    model.set_attn_implementation(attention.packed_attention(torch.device("cpu"), True, seq_len=2048))
    assert model.config._attn_implementation == attention.VARLEN

    def forward(**inputs) -> torch.Tensor:
        return model(**inputs, use_cache=False).logits

    error = attention.packing_error(forward, SIZES["vocab_size"], torch.device("cpu"), varlen=True)
    assert error <= attention.PACKING_TOLERANCE[torch.bfloat16]


def test_cpu_varlen_attention_sees_only_its_own_document(tiny_tokenizer):
    """Proof the comparison above can fail: with the earlier documents changed, the last document's
    packed logits stay the same under varlen, and change when the positions do not restart (one
    document: the last tokens then attend to the changed ones)."""
    model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval()
    model.set_attn_implementation(attention.packed_attention(torch.device("cpu"), False, seq_len=2048))
    generator = torch.Generator().manual_seed(1)
    first, other_first, last = (torch.randint(3, 300, (n,), generator=generator) for n in (20, 20, 15))
    restart = torch.cat([torch.arange(20), torch.arange(15)]).unsqueeze(0)
    no_restart = torch.arange(35).unsqueeze(0)

    def last_logits(prefix: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([prefix, last]).unsqueeze(0)
        with torch.no_grad():
            return model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, -15:]

    torch.testing.assert_close(
        last_logits(first, restart), last_logits(other_first, restart), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(
        last_logits(first, no_restart), last_logits(other_first, no_restart), atol=1e-3, rtol=1e-3
    )


@CUDA
def test_gpu_sdpa_block_mask_packing_is_exact(tiny_tokenizer):
    """fp32 with TF32 off: the only difference left is summation order."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval().cuda()
    packed, alone, packed_loss, alone_loss = packed_and_alone(model, torch.device("cuda"))
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-4, rtol=1e-4)


@CUDA
def test_gpu_varlen_flash_packing_is_exact(tiny_tokenizer):
    """bf16, where the kernel runs: packed through varlen flash attention vs alone through sdpa (its
    flash kernel, no mask). bf16 keeps 8 bits of mantissa and the matmuls of a longer row may tile
    differently, so the tolerance is bf16's: 2e-2 on logits of magnitude ~1, 1e-2 on the loss."""
    assert attention.varlen_available(), "this PyTorch has no torch.nn.attention.varlen"
    model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval().cuda().to(torch.bfloat16)
    alone_model = scratch_model(SIZES, tiny_tokenizer, seed=0).eval().cuda().to(torch.bfloat16)
    model.set_attn_implementation(attention.packed_attention(torch.device("cuda"), True, seq_len=2048))
    assert model.config._attn_implementation == attention.VARLEN
    packed, _, packed_loss, _ = packed_and_alone(model, torch.device("cuda"))
    _, alone, _, alone_loss = packed_and_alone(alone_model, torch.device("cuda"))
    torch.testing.assert_close(packed, alone, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(packed_loss.float(), alone_loss.float(), atol=1e-2, rtol=1e-2)
