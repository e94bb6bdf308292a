"""Model FLOPs and MFU (chatmill/flops.py), PaLM appendix B, counted from the model itself so that
the count follows the architecture; each family checked against a count by hand."""

import pytest
import torch
from conftest import gpt2_bpe_tokenizer, tiny_base

from chatmill.flops import attention_width, flops_per_token, matmul_parameters, mfu
from chatmill.modeling import scratch_model

H, LAYERS, HEADS, KV_HEADS, INTER = 32, 2, 4, 2, 64  # conftest.tiny_base's sizes
HEAD = H // HEADS
# Weights that multiply activations in one layer, by hand, and whether the output layer is its own.
LAYER_WEIGHTS = {
    # q, k, v (grouped: KV_HEADS x HEAD wide), o; gate, up, down
    "llama": H * H + 2 * H * KV_HEADS * HEAD + H * H + 3 * H * INTER,
    "mistral": H * H + 2 * H * KV_HEADS * HEAD + H * H + 3 * H * INTER,
    "qwen2": H * H + 2 * H * KV_HEADS * HEAD + H * H + 3 * H * INTER,  # q/k/v biases are not weights
    # fused query_key_value, dense; h -> 4h... here intermediate_size, and back
    "gpt-neox": H * 3 * H + H * H + 2 * H * INTER,
    # q, k, v, out (no grouping); fc_in to 4 x hidden and fc_out, parallel to attention
    "gptj": 4 * H * H + 2 * H * 4 * H,
}


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_bpe_tokenizer()


@pytest.mark.parametrize("architecture", sorted(LAYER_WEIGHTS))
def test_flops_per_token_follow_the_architecture(tokenizer, architecture):
    model = tiny_base(architecture, tokenizer, max_positions=512)
    output_layer = len(tokenizer) * H  # untied: the lookup is not counted, the output layer is
    assert matmul_parameters(model) == LAYERS * LAYER_WEIGHTS[architecture] + output_layer
    assert attention_width(model.config) == HEADS * HEAD
    assert flops_per_token(model, 512) == 6 * (LAYERS * LAYER_WEIGHTS[architecture] + output_layer) + (
        12 * LAYERS * HEADS * HEAD * 512
    )


def test_a_tied_output_layer_is_counted_once(tiny_tokenizer):
    sizes = {"vocab_size": 300, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    sizes |= {"num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}
    model = scratch_model(sizes, tiny_tokenizer, seed=0)
    layer = 4 * 16 * 16 + 3 * 16 * 32
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert matmul_parameters(model) == layer + len(tiny_tokenizer) * 16
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied: the same count
    assert matmul_parameters(model) == layer + len(tiny_tokenizer) * 16


def test_a_head_size_other_than_hidden_over_heads_counts_the_attention_it_computes(tokenizer):
    model = tiny_base("qwen2", tokenizer, head_dim=16)  # 4 heads x 16 = 64 wide on a hidden size of 32
    assert attention_width(model.config) == 64


def test_a_sliding_window_bounds_the_attention_span(tokenizer):
    windowed = tiny_base("mistral", tokenizer, max_positions=2048, sliding_window=256)
    full = tiny_base("mistral", tokenizer, max_positions=2048)
    attention_at = 12 * LAYERS * HEADS * HEAD
    assert flops_per_token(full, 2048) - flops_per_token(windowed, 2048) == attention_at * (2048 - 256)


def test_mfu_is_model_flops_over_the_devices_peak():
    # 4 A6000s (154.8 TFLOPS dense bf16 each) at 2,000 tokens/s of a GPT-J-6B-like 6.05e9 weights, 2048 tokens
    flops = 6 * 6_050_000_000 + 12 * 28 * 4096 * 2048
    assert mfu(2000, flops, 4, 154.8) == pytest.approx(2000 * flops / (4 * 154.8e12))
    assert 0.125 < mfu(2000, flops, 4, 154.8) < 0.127
