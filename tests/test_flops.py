"""Model FLOPs and MFU (chatmill/flops.py), PaLM appendix B."""

import pytest
import torch

from chatmill.flops import flops_per_token, matmul_parameters, mfu
from chatmill.modeling import scratch_model


def test_mfu_counts_six_flops_per_weight_and_the_attention_term():
    # GPT-J-6B: 28 layers, hidden 4096, seq 2048; ~6.05e9 weights besides the input embedding
    flops = flops_per_token(6_050_000_000, 28, 4096, 2048)
    assert flops == 6 * 6_050_000_000 + 12 * 28 * 4096 * 2048
    # 4 A6000s (154.8 TFLOPS dense bf16 each) at 2,000 tokens/s: about 12.6% MFU
    assert mfu(2000, flops, 4, 154.8) == pytest.approx(2000 * flops / (4 * 154.8e12))
    assert 0.125 < mfu(2000, flops, 4, 154.8) < 0.127


def test_matmul_parameters_skip_the_input_embedding_lookup(tiny_tokenizer):

    sizes = {"vocab_size": 300, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    sizes |= {"num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}
    model = scratch_model(sizes, tiny_tokenizer, seed=0)
    embedding = model.get_input_embeddings().weight
    assert matmul_parameters(model) == sum(p.numel() for p in model.parameters())  # tied: counted once
    model.lm_head.weight = torch.nn.Parameter(embedding.detach().clone())  # untied, as in GPT-J
    assert matmul_parameters(model) == sum(p.numel() for p in model.parameters()) - embedding.numel()
