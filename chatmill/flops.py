"""Model FLOPs and utilisation (MFU), PaLM appendix B: what a training step computes per token."""

import torch


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that multiply an activation: all parameters but the input embedding, a lookup.
    A tied output layer shares the embedding's weight, which is then counted once, as the matmul."""
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is embedding
    return sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())


def flops_per_token(matmul_params: int, layers: int, hidden: int, seq_len: int) -> int:
    """Training FLOPs per token, PaLM appendix B: 6 per matmul weight (2 forward, 4 backward) plus
    12 x layers x hidden x seq_len for attention scores and values over the full (unmasked) window.
    Recomputation by gradient checkpointing is not counted: MFU measures the model's work."""
    return 6 * matmul_params + 12 * layers * hidden * seq_len


def mfu(tokens_per_s: float, flops: int, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak (train.peak_tflops each)."""
    return tokens_per_s * flops / (devices * peak_tflops * 1e12)
