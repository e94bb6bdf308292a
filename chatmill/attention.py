"""Attention over packed rows: causal attention within each document, no work for the rest.

A packed row holds several documents whose position_ids restart at 0 (chatmill/shards.py). With
transformers' "sdpa" attention the restarts become a dense block-diagonal mask: exact, but every
query still scores all keys of the row, and on a GPU a mask keeps SDPA off its flash kernel.
"chatmill_varlen" computes each document's causal attention alone: PyTorch's flash-attention
varlen kernel on CUDA (bf16/fp16), causal SDPA per document on the CPU for long rows
(packed_attention says which one a run uses).

Document starts come from position_ids, so this is for training on packed rows: a padding
attention_mask is not used (transformers builds none for an implementation without a mask
function). Right padding is harmless, since causal attention never looks ahead.

Not every architecture takes transformers' attention interface (GPT-J does not): such a model keeps
its own attention, which must build the block-diagonal mask from the restarting position ids
itself. Whatever a model gets, training checks at start-up that a packed document's logits equal
the document's alone (check_packing), and stops with one line if they do not.
"""

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from chatmill.errors import ChatmillError

VARLEN = "chatmill_varlen"
# Packed-row length from which per-document SDPA beats the masked square on the CPU (tiny scratch
# model, 2 cores, per-document vs masked): `make bench-train` supervised tokens/s 1.28x at seq_len
# 2048, 0.93x at 1024 (within noise); train-part1 of the embedded default (256) tokens/s 0.82x.
CPU_VARLEN_ABOVE = 1024
# Largest |packed - alone| logit difference, relative to the logits' scale, that is rounding: fp32
# measured ~1e-7 (tests/test_attention.py), bf16 flash ~1e-2; a document that sees another is off
# by far more.
PACKING_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-2}


def document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """cu_seqlens for the flattened [batch x seq] tokens: where each document starts, then the end.
    A document starts where the position does not grow by one (transformers' rule for packed rows)
    and at every row start."""
    batch, seq_len = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    boundaries = torch.nonzero(starts.reshape(-1)).flatten()
    end = torch.tensor([batch * seq_len], device=position_ids.device)
    return torch.cat([boundaries, end]).to(torch.int32)


def varlen_available() -> bool:
    """PyTorch ships the varlen kernel from 2.9; it runs on CUDA only."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _flash_varlen(query, key, value, cu_seqlens, max_len, scale):
    """torch's varlen_attn, causal; its keyword arguments changed between PyTorch releases."""
    from torch.nn.attention.varlen import varlen_attn

    accepted = inspect.signature(varlen_attn).parameters
    options = {"window_size": (-1, 0)} if "window_size" in accepted else {"is_causal": True}
    if "scale" in accepted:
        options["scale"] = scale
    if key.shape[1] != query.shape[1]:  # grouped-query attention
        if "enable_gqa" in accepted:
            options["enable_gqa"] = True
        else:  # older releases: share each KV head with its query group by repeating it
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, **options)


def _sdpa_per_document(query, key, value, cu_seqlens, max_len, scale):
    """The same on the CPU: causal SDPA over each document, so no work goes to masked-out blocks.
    Each document goes in as a batch of one, [1, heads, length, dim]: SDPA's CPU flash kernel takes
    batched input only, and a 3-D [heads, length, dim] falls back to the math path, which builds
    every score of the square and a softmax over it. The documents are split off rather than
    sliced: the backward of a split is one concatenation, of a slice a zero-filled copy of the
    whole row per document."""
    bounds = cu_seqlens.tolist()
    lengths = [end - start for start, end in zip(bounds, bounds[1:], strict=False)]
    pieces = []
    for documents in zip(*(states.split(lengths) for states in (query, key, value)), strict=True):
        q, k, v = (states.transpose(0, 1).unsqueeze(0) for states in documents)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        pieces.append(out[0].transpose(0, 1))
    return torch.cat(pieces)


def _varlen_kernel(query, key, value, cu_seqlens, max_len, scale):
    """[tokens, heads, dim] q/k/v, causal attention within each document of cu_seqlens."""
    kernel = _flash_varlen if query.is_cuda else _sdpa_per_document
    return kernel(query, key, value, cu_seqlens, max_len, scale)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: q/k/v [batch, heads, seq, dim] in, [batch, seq, heads, dim]
    out. Document starts come from `cu_seq_lens_q` when the caller passes them (computed on the host,
    no device sync) or else from `position_ids`."""
    if dropout:
        raise ValueError(f"{VARLEN}: attention dropout is not supported")
    batch, heads, seq_len, dim = query.shape
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=query.device).expand(batch, -1)
        cu_seqlens = document_starts(position_ids.expand(batch, -1))
    # seq_len bounds every document: the kernel needs no exact maximum, and reading one would sync.
    max_len = kwargs.get("max_length_q") or seq_len

    def tokens(states: torch.Tensor) -> torch.Tensor:  # [batch, h, seq, dim] -> [batch x seq, h, dim]
        return states.transpose(1, 2).reshape(batch * seq_len, states.shape[1], dim)

    out = _varlen_kernel(tokens(query), tokens(key), tokens(value), cu_seqlens, max_len, scaling)
    return out.reshape(batch, seq_len, heads, dim), None


def register() -> str:
    """Make "chatmill_varlen" a valid `attn_implementation`; returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


def packed_attention(device: torch.device, bf16: bool, seq_len: int) -> str:
    """The attention implementation for packed training rows of seq_len tokens on `device`.
    CUDA in bf16: varlen (flash). CUDA in fp32 (flash kernels need half precision) or a PyTorch
    older than 2.9: sdpa with the block-diagonal mask. CPU: varlen for rows longer than
    CPU_VARLEN_ABOVE, where skipping the masked blocks outweighs a kernel call per document, else sdpa.
    """
    if device.type == "cpu":
        return register() if seq_len > CPU_VARLEN_ABOVE else "sdpa"
    return register() if bf16 and varlen_available() else "sdpa"


def sliding_window(config) -> int | None:
    """The window a model's attention is limited to, if any (Mistral; Qwen2 when it uses one)."""
    if not getattr(config, "use_sliding_window", True):
        return None
    return getattr(config, "sliding_window", None)


def attention_for(model, device: torch.device, bf16: bool, seq_len: int) -> str:
    """The attention a model trains with on packed rows. A model that takes transformers' attention
    interface gets packed_attention's choice, or sdpa where a sliding window shorter than the rows
    applies (varlen attends to the whole document); any other keeps its own implementation."""
    if not getattr(model, "_supports_attention_backend", False):
        return model.config._attn_implementation
    window = sliding_window(model.config)
    if window is not None and window < seq_len:
        return "sdpa"  # its mask functions apply the window; varlen would not
    return packed_attention(device, bf16, seq_len)


def use_packed_attention(model, device: torch.device, bf16: bool, seq_len: int) -> str:
    """Set the model's attention for training on packed rows (attention_for); returns its name."""
    attention = attention_for(model, device, bf16, seq_len)
    if attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    return attention


@torch.no_grad()
def packing_error(
    forward: Callable[..., torch.Tensor], vocab_size: int, device: torch.device, varlen: bool
) -> float:
    """How far a document packed after another is from the same document alone: the largest logit
    difference, relative to the logits' scale. `forward(input_ids=, position_ids=[, cu_seq_lens_q=])`
    returns logits, as training calls the model."""
    generator = torch.Generator().manual_seed(0)
    first, last = (torch.randint(0, vocab_size, (length,), generator=generator) for length in (23, 41))
    rows = {
        "packed": (torch.cat([first, last]), torch.cat([torch.arange(len(first)), torch.arange(len(last))])),
        "alone": (last, torch.arange(len(last))),
    }
    logits = {}
    for name, (ids, positions) in rows.items():
        inputs = {"input_ids": ids[None].to(device), "position_ids": positions[None].to(device)}
        if varlen:
            inputs["cu_seq_lens_q"] = document_starts(inputs["position_ids"])
        logits[name] = forward(**inputs)[0, -len(last) :].float()
    scale = max(1.0, logits["alone"].abs().max().item())
    return (logits["packed"] - logits["alone"]).abs().max().item() / scale


def check_packing(
    forward: Callable[..., torch.Tensor], model, attention: str, dtype: torch.dtype, device: torch.device
) -> None:
    """Stop with one line when documents packed in a row see each other under this attention."""
    error = packing_error(forward, model.config.vocab_size, device, attention == VARLEN)
    if error > PACKING_TOLERANCE[dtype]:
        raise ChatmillError(
            f"train: {type(model).__name__} with {attention} attention lets packed documents see each other "
            f"(logits of a packed document differ from it alone by {error:.2g} of their scale); chatmill "
            "trains on packed rows only: set model.base to a model of another architecture (Llama, Mistral, "
            "Qwen2, GPT-NeoX, GPT-J are tested)"
        )
