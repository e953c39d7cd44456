"""Loss (only where there is a target) and evaluation: eval loss and metrics on generated answers."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.render import Rendered, render_prompt
from ..metrics import averages, score_each
from .batching import Batch, batches_in_order, collate, pick_layout


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(decoder stack, output layer) of a causal LM, through any peft wrapping."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def summed_loss(model: Any, batch: Batch) -> Any:
    """Sum of token cross-entropies over positions that have a target.

    The output layer runs only on those positions: with a 49k vocabulary the logits of prompt tokens
    would be most of the step's compute and memory, and they carry no loss. The model's own logit
    processing (scaling, soft-capping) is applied as its forward would (core.logits).
    """
    from .logits import processing_for, summed_cross_entropy

    decoder, head = causal_lm_parts(model)
    extra = {"nbft_segments": batch.segments} if batch.segments is not None else {}
    hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                     attention_mask=batch.attention_mask, use_cache=False, **extra).last_hidden_state
    keep = batch.targets != -100
    return summed_cross_entropy(hidden[keep], head, batch.targets[keep], processing_for(model))


def eval_loss(model: Any, examples: Sequence[Rendered], batch_size: int, device: str, pad_id: int = 0,
              layout: str = "auto", precision: str = "fp32") -> float | None:
    import torch

    from .precision import MixedPrecision

    if not examples:
        return None
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad(), MixedPrecision.for_run(precision, device).autocast(model):
        for chunk in batches_in_order(examples, batch_size):
            batch = collate(chunk, device, pick_layout(layout, model), pad_id)
            total += float(summed_loss(model, batch))
            count += batch.trained_tokens
    model.train(was_training)
    return total / max(1, count)


def generate(model: Any, tokenizer: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
             device: str, batch_size: int = 32, use_adapter: bool = True) -> list[str]:
    """Greedy answers, batched with left padding; the same chat template as training."""
    import torch

    texts = [render_prompt(tokenizer, messages) for messages in prompts]
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    adapter_off = (model.disable_adapter() if (not use_adapter and hasattr(model, "disable_adapter"))
                   else contextlib.nullcontext())
    try:
        with torch.no_grad(), adapter_off:
            for start in range(0, len(texts), batch_size):
                encoded = tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True,
                                    add_special_tokens=False).to(device)
                generated = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                           eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id)
                new = generated[:, encoded["input_ids"].shape[1]:]
                outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in outputs]


@dataclass
class GenerationEval:
    metrics: dict[str, float]
    predictions: list[str]
    samples: list[dict[str, str | float]] = field(default_factory=list)  # "score" is a number, or ""


def evaluate_generation(model: Any, tokenizer: Any, cases: Sequence[tuple[list[dict[str, str]], str]],
                        metric_names: Sequence[str], max_new_tokens: int, device: str,
                        use_adapter: bool = True, base_predictions: Sequence[str] | None = None,
                        n_samples: int = 5) -> GenerationEval:
    prompts = [prompt for prompt, _ in cases]
    references = [reference for _, reference in cases]
    predictions = generate(model, tokenizer, prompts, max_new_tokens, device, use_adapter=use_adapter)
    table = score_each(metric_names, predictions, references)
    # Without metrics (free-form answers) no case scores better than another: show the first ones.
    case_score = [sum(values[i] for values in table.values()) / len(table) if table else 1.0
                  for i in range(len(cases))]
    samples: list[dict[str, str | float]] = []
    for index, why in pick_samples(case_score, n_samples):
        samples.append({"prompt": prompts[index][-1]["content"] if prompts[index] else "",
                        "reference": references[index],
                        "base": (base_predictions or predictions)[index],
                        "current": predictions[index], "score": round(case_score[index], 3) if table else "",
                        "shown": why})
    return GenerationEval(averages(table), predictions, samples)


def pick_samples(case_score: Sequence[float], n: int, worst: int = 2) -> list[tuple[int, str]]:
    """The same first cases at every evaluation (to watch them change), then the lowest-scoring of the
    rest that are not perfect (to see where the model fails), as H2O LLM Studio shows its worst samples."""
    fixed = list(range(min(n - worst, len(case_score))))
    rest = sorted((i for i in range(len(fixed), len(case_score)) if case_score[i] < 1.0),
                  key=lambda i: case_score[i])
    picked = [(i, "fixed") for i in fixed] + [(i, "lowest score") for i in rest[:worst]]
    # Nothing failing: fill with the next cases so the table keeps its size.
    shown = {i for i, _ in picked}
    extra = [i for i in range(len(fixed), len(case_score)) if i not in shown]
    return picked + [(i, "fixed") for i in extra[: n - len(picked)]]
