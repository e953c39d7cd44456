"""Training methods: what a method owns in the shared recipe — its data and its step's loss.

The recipe (core/trainer.py) keeps events, checkpoints, cancel, early stopping, resume and distributed
sums; a method prepares the data, takes one optimizer step's forward/backward over its micro-batches
(the recipe's `step` calls it), and computes its eval loss and extra eval figures. SFT and DPO are here,
GRPO in core/grpo.py.

DPO's loss is the sigmoid loss of Rafailov et al. (TRL's default `loss_type="sigmoid"`). TRL 1.16 keeps that
loss inside `DPOTrainer._compute_loss`, a trainer method over its own batch dict, so it cannot be called
from our loop; the formula is four lines and is checked against a direct computation in tests/test_dpo.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import RunConfig
from ..data.prepare import PreparedData
from .batching import collate, pick_layout
from .distributed import Group
from .evaluate import causal_lm_parts, eval_loss, summed_loss
from .precision import MixedPrecision
from .setup import Loaded


@dataclass
class StepResult:
    loss: float  # this rank's share of the step's loss (the trainer sums over ranks)
    tokens: int  # this rank's real tokens
    trained_tokens: int  # all ranks
    stats: dict[str, Any] = field(default_factory=dict)  # extra step-event fields, already summed over ranks


class Method(Protocol):
    """What plugs into the recipe. `step` gets one optimizer step's micro-batches (this rank's share of
    each), runs forward and backward under `mixed` and leaves the gradients; the recipe sums them over
    ranks and steps the optimizer."""

    name: str

    def prepare(self, config: RunConfig, tokenizer: Any) -> PreparedData: ...

    def step(self, micro: list[list[Any]], mixed: MixedPrecision) -> StepResult: ...

    def evaluate(self, examples: Sequence[Any]) -> dict[str, Any]: ...


class SFT:
    """Next-token cross-entropy on the trained positions, normalized by the whole batch's trained tokens."""

    name = "sft"

    def __init__(self, config: RunConfig, loaded: Loaded, group: Group) -> None:
        self.config, self.loaded, self.group = config, loaded, group
        self.layout = pick_layout(config.train.batch_layout, loaded.model)
        # dropout draws a mask per example: a shared prefix would get one
        self.share = config.lora.dropout == 0

    def prepare(self, config: RunConfig, tokenizer: Any) -> PreparedData:
        from ..data.prepare import prepare

        return prepare(config.data, tokenizer, seed=config.train.seed)

    def step(self, micro: list[list[Any]], mixed: MixedPrecision) -> StepResult:
        loaded = self.loaded
        pad = loaded.tokenizer.pad_token_id
        batches = [collate(m, loaded.device, self.layout, pad, self.share) for m in micro]
        # Normalize by the whole batch's trained tokens (all ranks), so N processes take the step one would.
        trained = int(self.group.sum(sum(b.trained_tokens for b in batches)))
        loss_sum = 0.0
        for batch in batches:
            with mixed.autocast(loaded.model):
                loss = summed_loss(loaded.model, batch) / trained
            mixed.backward(loss)
            loss_sum += float(loss.detach())
        return StepResult(loss_sum, sum(b.tokens for b in batches), trained)

    def evaluate(self, examples: Sequence[Any]) -> dict[str, Any]:
        loaded, t = self.loaded, self.config.train
        return {"eval_loss": eval_loss(loaded.model, examples, t.batch_size, loaded.device,
                                       loaded.tokenizer.pad_token_id, t.batch_layout, loaded.precision)}


def sequence_logps(model: Any, rendered: Sequence[Any], device: str, pad_id: int) -> Any:
    """Sum of the answer tokens' log-probabilities per sequence ([len(rendered)]); the output layer runs only
    on answer positions, as in SFT."""
    import torch

    from .logits import processing_for

    batch = collate(rendered, device, "padded", pad_id)
    decoder, head = causal_lm_parts(model)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     use_cache=False).last_hidden_state
    keep = batch.targets != -100
    logits = processing_for(model)(head(hidden[keep])).float()
    token_logps = -torch.nn.functional.cross_entropy(logits, batch.targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(len(rendered), device=token_logps.device, dtype=token_logps.dtype)
    return sums.index_add(0, rows, token_logps)


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float
             ) -> tuple[Any, Any, Any]:
    """(per-pair loss, chosen reward, rejected reward): -log σ(β·[(π_c − ref_c) − (π_r − ref_r)])."""
    import torch

    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    losses = -torch.nn.functional.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()


class DPO:
    """Direct preference optimization; the reference is the base model, i.e. the same weights with the
    adapter disabled (peft's `disable_adapter()`), so no second copy of the model is held."""

    name = "dpo"

    def __init__(self, config: RunConfig, loaded: Loaded, group: Group) -> None:
        self.config, self.loaded, self.group = config, loaded, group
        self.beta = config.train.dpo_beta

    def prepare(self, config: RunConfig, tokenizer: Any) -> PreparedData:
        from ..data.preference import prepare_preferences

        return prepare_preferences(config.data, tokenizer, seed=config.train.seed)

    def _pairs(self, pairs: Sequence[Any]) -> tuple[Any, Any, Any]:
        import torch

        model, loaded = self.loaded.model, self.loaded
        rendered = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        policy = sequence_logps(model, rendered, loaded.device, loaded.tokenizer.pad_token_id)
        with torch.no_grad(), model.disable_adapter():
            reference = sequence_logps(model, rendered, loaded.device, loaded.tokenizer.pad_token_id)
        n = len(pairs)
        return dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta)

    def step(self, micro: list[list[Any]], mixed: MixedPrecision) -> StepResult:
        model = self.loaded.model
        count = self.group.sum(sum(len(m) for m in micro))
        loss_sum, sums = 0.0, {"chosen_reward": 0.0, "rejected_reward": 0.0, "reward_margin": 0.0,
                               "reward_accuracy": 0.0}
        tokens = trained = 0
        for pairs in micro:
            with mixed.autocast(model):
                losses, chosen, rejected = self._pairs(pairs)
                loss = losses.sum() / count
            mixed.backward(loss)
            loss_sum += float(loss.detach())
            _add(sums, chosen, rejected)
            tokens += sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
            trained += sum(p.chosen.trained_tokens + p.rejected.trained_tokens for p in pairs)
        stats = {k: self.group.sum(v) / count for k, v in sums.items()}
        return StepResult(loss_sum, tokens, int(self.group.sum(trained)), stats)

    def evaluate(self, examples: Sequence[Any]) -> dict[str, Any]:
        import torch

        if not examples:
            return {"eval_loss": None}
        model, loaded = self.loaded.model, self.loaded
        was_training = model.training
        model.eval()
        total, sums = 0.0, {"chosen_reward": 0.0, "rejected_reward": 0.0, "reward_margin": 0.0,
                            "reward_accuracy": 0.0}
        try:
            with torch.no_grad(), MixedPrecision.for_run(loaded.precision, loaded.device).autocast(model):
                size = self.config.train.batch_size
                for start in range(0, len(examples), size):
                    losses, chosen, rejected = self._pairs(examples[start: start + size])
                    total += float(losses.sum())
                    _add(sums, chosen, rejected)
        finally:
            model.train(was_training)
        figures = {f"eval_{k}": v / len(examples) for k, v in sums.items()}
        return {"eval_loss": total / len(examples)} | figures


def _add(sums: dict[str, float], chosen: Any, rejected: Any) -> None:
    sums["chosen_reward"] += float(chosen.sum())
    sums["rejected_reward"] += float(rejected.sum())
    sums["reward_margin"] += float((chosen - rejected).sum())
    sums["reward_accuracy"] += float((chosen > rejected).float().sum())
