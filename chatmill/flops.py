"""Model FLOPs and utilisation (MFU), PaLM appendix B: what a training step computes per token,
read from the model itself so that it follows the architecture (grouped-query attention, untied
output layers, GPT-J's parallel attention and MLP, a sliding window)."""

import torch
from transformers.pytorch_utils import Conv1D

from chatmill.attention import sliding_window


def linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of the linear layers (GPT-2 style Conv1D ones too), the output layer included,
    each once: what multiplies an activation. Embedding lookups, norms, biases and rotary embeddings
    are elementwise work; a tied output layer is the embedding's weight, counted once as a matmul."""
    linear = (module.weight for module in model.modules() if isinstance(module, torch.nn.Linear | Conv1D))
    return list({id(weight): weight for weight in linear}.values())


def matmul_parameters(model: torch.nn.Module) -> int:
    return sum(weight.numel() for weight in linear_weights(model))


def attention_width(config) -> int:
    """The width of the attention scores and values: query heads x head size (which need not be
    the hidden size), whatever the number of key-value heads."""
    heads = config.num_attention_heads
    return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> int:
    """Training FLOPs per token, PaLM appendix B: 6 per matmul weight (2 forward, 4 backward) plus
    12 x layers x attention width x span for the attention scores and values over the full
    (unmasked) window, the span being seq_len or a shorter sliding window. Recomputation by
    gradient checkpointing is not counted: MFU measures the model's work. A frozen weight (the base
    under LoRA) costs 4: forward, and the gradient of its input, but none of its own. Parallel
    attention and MLP (GPT-J, GPT-NeoX) change when the work is done, not how much."""
    config = model.config
    span = min(seq_len, sliding_window(config) or seq_len)
    weights = linear_weights(model)
    trained = sum(weight.numel() for weight in weights if weight.requires_grad)
    frozen = sum(weight.numel() for weight in weights if not weight.requires_grad)
    return 6 * trained + 4 * frozen + 12 * config.num_hidden_layers * attention_width(config) * span


def mfu(tokens_per_s: float, flops: int, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak (train.peak_tflops each)."""
    return tokens_per_s * flops / (devices * peak_tflops * 1e12)
