"""Model FLOPs and utilisation (MFU), PaLM appendix B: what a training step computes per token,
read from the model itself so that it follows the architecture (grouped-query attention, untied
output layers, GPT-J's parallel attention and MLP, a sliding window)."""

import torch
from transformers.pytorch_utils import Conv1D

from chatmill.attention import sliding_window


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that multiply an activation: those of the linear layers (GPT-2 style Conv1D ones
    too), the output layer included. Embedding lookups, norms, biases and rotary embeddings are
    elementwise work and not counted; a tied output layer is counted once, as the matmul it is."""
    return sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear | Conv1D)
    )


def attention_width(config) -> int:
    """The width of the attention scores and values: query heads x head size (which need not be
    the hidden size), whatever the number of key-value heads."""
    heads = config.num_attention_heads
    return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> int:
    """Training FLOPs per token, PaLM appendix B: 6 per matmul weight (2 forward, 4 backward) plus
    12 x layers x attention width x span for the attention scores and values over the full
    (unmasked) window, the span being seq_len or a shorter sliding window. Recomputation by
    gradient checkpointing is not counted: MFU measures the model's work. Parallel attention and
    MLP (GPT-J, GPT-NeoX) change when the work is done, not how much."""
    config = model.config
    span = min(seq_len, sliding_window(config) or seq_len)
    return 6 * matmul_parameters(model) + 12 * config.num_hidden_layers * attention_width(config) * span


def mfu(tokens_per_s: float, flops: int, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak (train.peak_tflops each)."""
    return tokens_per_s * flops / (devices * peak_tflops * 1e12)
