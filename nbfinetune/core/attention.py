"""SDPA attention over one packed row that holds a shared prefix once plus each example's remainder.

Chat data repeats itself at the start of every row: the template's system prompt, the dataset's
fixed instruction. Those tokens have the same hidden states in every example of a batch (same ids,
same positions, causal attention), so the "shared" layout computes them once per batch and lets every
example's remainder attend to them. Together with no padding in the linear layers, this is where most
of a small model's step time goes on CPU (bench/bench_trainer.py). Gradients are the same as for
the unshared batch: autograd sums each example's contribution into the one shared prefix.

The model is loaded with `attn_implementation="nbft_segmented"` (no "sdpa" in the name:
transformers treats any such name as SDPA and refuses it for models without SDPA support, such as
Gemma-2; those load on "eager", see core.setup). Without a `nbft_segments` argument (generation, padded
batches) it is plain SDPA, masks included; with one, the forward call passes an all-ones 2D
mask so transformers builds no T×T mask, and attention runs per example on gathered queries and keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NAME = "nbft_segmented"
_registered = False


@dataclass
class Segments:
    """Index tensors that gather a packed row [prefix, rest_1, …, rest_B] into per-example attention."""

    prefix: int  # shared prefix length P (0: none)
    queries: Any  # LongTensor [B, Lmax]: packed index of each example's remaining tokens (0 where padded)
    keys: Any  # LongTensor [B, P + Lmax]: prefix indices, then the example's own (0 where padded)
    real: Any  # LongTensor [sum L]: flat [B*Lmax] positions of the real queries, in packed order


def segments(prefix: int, lengths: Sequence[int], device: str) -> Segments:
    import torch

    width = max(lengths)
    starts = torch.tensor([prefix + sum(lengths[:i]) for i in range(len(lengths))], device=device)
    offsets = torch.arange(width, device=device)
    valid = offsets[None, :] < torch.tensor(list(lengths), device=device)[:, None]
    queries = torch.where(valid, starts[:, None] + offsets[None, :], 0)
    prefix_keys = torch.arange(prefix, device=device).expand(len(lengths), prefix)
    keys = torch.cat([prefix_keys, queries], dim=1)
    # Built once per batch, so attention needs no boolean indexing (a host sync per layer on a GPU).
    real = valid.flatten().nonzero().squeeze(1)
    return Segments(prefix, queries, keys, real)


def segmented_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                        dropout: float = 0.0, scaling: float | None = None,
                        nbft_segments: Segments | None = None, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if nbft_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise ValueError("the shared-prefix batch layout does not support sliding-window or soft-capped "
                         "attention; use train.batch_layout='padded'")
    seg = nbft_segments
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
    p = dropout if module.training else 0.0
    # [1, H, T, D] -> [B, H, L, D] by gathering along T.
    q = query[0][:, seg.queries].transpose(0, 1)
    k = key[0][:, seg.keys].transpose(0, 1)
    v = value[0][:, seg.keys].transpose(0, 1)
    # Query j of an example sees the whole prefix and its own keys 0..j: causal, aligned lower-right.
    # A real query never reaches a padded key (those come after it); padded queries are dropped below.
    causal = causal_lower_right(q.shape[2], k.shape[2])
    rest = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, dropout_p=p, scale=scaling)
    rest = rest.transpose(1, 2).flatten(0, 1).index_select(0, seg.real)  # [sum L, H, D], in packed order
    parts = [rest]
    if seg.prefix:
        pre = F.scaled_dot_product_attention(query[:, :, :seg.prefix], key[:, :, :seg.prefix],
                                             value[:, :, :seg.prefix], dropout_p=p, is_causal=True,
                                             scale=scaling)
        parts.insert(0, pre[0].transpose(0, 1))
    return torch.cat(parts, dim=0)[None].contiguous(), None


def register() -> str:
    """Make `attn_implementation="nbft_segmented"` loadable; masks are built exactly as for "sdpa"."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, segmented_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    return NAME
