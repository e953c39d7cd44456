"""The output layer on trained positions only, with the model's own logit processing, and cross-entropy
that never holds full-vocabulary logits for all of them at once.

Families post-process logits after the head: Granite divides by `logits_scaling`, Cohere multiplies by
`logit_scale`, Falcon-H1 by `lm_head_multiplier`, Gemma-2/3 soft-cap with `final_logit_softcapping`.
`check_output_path` compares our path with the model's own forward once at load, so a family with
processing we do not know about is caught before training instead of training on a wrong loss.

Cross-entropy: on CUDA with Liger Kernel installed, its fused linear cross-entropy (no logits tensor at
all); elsewhere, chunks of rows whose logits are recomputed in backward (activation checkpointing), so
at most one chunk's logits exist at a time. Small batches take one chunk without recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Logits elements (rows × vocabulary) above which the cross-entropy is chunked: 32M fp32 = 128 MB.
CHUNK_ELEMENTS = 32 * 1024 * 1024


class UnknownLogitProcessing(RuntimeError):
    """The model's own logits differ from head(hidden) with the processing we know."""


@dataclass(frozen=True)
class LogitProcessing:
    scale: float = 1.0  # logits × scale (Granite: 1 / logits_scaling; Cohere: logit_scale)
    softcap: float | None = None  # cap × tanh(logits / cap)

    def __call__(self, logits: Any) -> Any:
        import torch

        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def processing_for(model: Any) -> LogitProcessing:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    for source in (config, text):
        if getattr(source, "logits_scaling", None):
            scale = 1.0 / source.logits_scaling
        if getattr(source, "logit_scale", None):
            scale = float(source.logit_scale)
        if getattr(source, "lm_head_multiplier", None):
            scale = float(source.lm_head_multiplier)
    cap = getattr(text, "final_logit_softcapping", None) or getattr(config, "final_logit_softcapping", None)
    return LogitProcessing(scale, cap)


def check_output_path(model: Any, decoder: Any, head: Any) -> None:
    """Compare head(decoder(x)) + processing with the model's own logits on a few tokens."""
    import torch

    ids = torch.arange(1, 9, device=head.weight.device)[None] % head.weight.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = model(input_ids=ids, use_cache=False).logits
            ours = processing_for(model)(head(decoder(input_ids=ids, use_cache=False).last_hidden_state))
    finally:
        model.train(was_training)
    relative = 1e-3 if own.dtype == torch.float32 else 3e-2
    tolerance = relative * max(1.0, float(own.float().abs().max()))
    if ours.shape != own.shape or float((ours.float() - own.float()).abs().max()) > tolerance:
        raise UnknownLogitProcessing(
            f"{type(model).__name__}: its output layer processes logits in a way nbfinetune does not know, "
            "so the training loss would be wrong; please report the model id")


def summed_cross_entropy(hidden: Any, head: Any, targets: Any, processing: LogitProcessing,
                         chunk_elements: int = CHUNK_ELEMENTS) -> Any:
    """Sum of cross-entropies of head(hidden) (rows × hidden) against targets (rows)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    fused = _liger_loss(hidden, head, targets, processing)
    if fused is not None:
        return fused

    def chunk_loss(h: Any, t: Any) -> Any:
        return F.cross_entropy(processing(head(h)).float(), t, reduction="sum")

    vocab = head.weight.shape[0]
    rows = max(1, chunk_elements // vocab)
    if hidden.shape[0] <= rows:
        return chunk_loss(hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.split(rows), targets.split(rows), strict=True):
        total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
    return total


def _liger_loss(hidden: Any, head: Any, targets: Any, processing: LogitProcessing) -> Any:
    """Liger Kernel's fused linear cross-entropy (Triton, CUDA only), when installed and applicable."""
    if hidden.device.type != "cuda" or getattr(head, "bias", None) is not None or not hasattr(head, "weight"):
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    # head(h) × s == head(h × s) for a bias-free head: the scale folds into the hidden states.
    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=processing.softcap)
    scaled = hidden * processing.scale if processing.scale != 1.0 else hidden
    out = loss(head.weight, scaled.to(head.weight.dtype), targets)  # one dtype for its Triton matmul
    out = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)  # versions return a tuple/dataclass
    return out.float()
