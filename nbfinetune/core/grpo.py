"""GRPO (group relative policy optimization) as a training method of the shared loop.

Per step: G sampled completions per prompt (one batched `generate` with the KV cache, adapter on), every
reward scored, advantages normalized within each prompt's group, then the clipped policy-ratio objective
with a per-token KL penalty to the base (the same weights with the adapter disabled — no second copy).

One optimization step per generation batch, so the "old" policy is the current one detached (ratio 1 at
the point of evaluation, gradient of the clipped surrogate = advantage-weighted log-likelihood), as TRL does
with `num_iterations=1`. TRL 1.16 computes advantages and the loss inside `GRPOTrainer` methods bound to its
own batch dicts and accelerate; the formulas are short and written here over our batches, with tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import RunConfig
from ..data.preference import checked_rows, prompt_of
from ..data.prepare import DataError, DataReport, PreparedData, Problem, _split, token_stats
from ..data.render import IGNORE, Rendered, render_prompt
from ..rewards import load_rewards, score
from .distributed import Group
from .methods import StepResult
from .setup import Loaded

SHOWN_COMPLETIONS = 4  # sampled completions with their rewards in each step event


@dataclass
class PromptItem:
    row: int
    messages: list[dict[str, str]]
    ids: list[int]
    fields: dict[str, Any] = field(default_factory=dict)  # the row's other columns, given to the rewards

    @property
    def input_ids(self) -> list[int]:
        return self.ids

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def prepare_prompts(settings: Any, tokenizer: Any, seed: int = 42) -> PreparedData:
    from ..data.sources import resolve

    train_source, eval_source = resolve(settings.path, settings.eval_path)
    report = DataReport(format="prompts")

    def load(source: str, split: str) -> list[PromptItem]:
        items = []
        for row, (messages, fields) in checked_rows(source, split, getattr(settings, "columns", None), report,
                                                    prompt_of):
            ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
            if len(ids) >= settings.max_seq_len:
                reason = (f"the prompt is {len(ids)} tokens, max_seq_len is {settings.max_seq_len}: "
                          "no room for a completion")
                report.add(Problem(row.number, reason, split, row.file))
                continue
            items.append(PromptItem(row.number, messages, ids, fields))
        return items

    train = load(train_source, "train")
    evaluation = load(eval_source, "eval") if eval_source else []
    if not eval_source:
        train, evaluation = _split(train, settings.eval_fraction, seed)
    errors = report.errors
    if getattr(settings, "on_bad_rows", "skip") == "strict" and errors:
        raise DataError(f"{len(errors)} bad row(s) and on_bad_rows='strict' — "
                        + "; ".join(map(str, errors[:5])))
    if not train:
        raise DataError(f"no usable prompt rows in {train_source}" + (
            f" — {'; '.join(map(str, errors[:5]))}" if errors else ""))
    report.valid = len(train) + len(evaluation)
    report.tokens = token_stats([len(p.ids) for p in train])
    cases = [(p.messages, str(p.fields["answer"])) for p in evaluation
             if isinstance(p.fields.get("answer"), str)]
    return PreparedData(train=train, eval=evaluation, eval_cases=cases, report=report)  # type: ignore[arg-type]


def sample(model: Any, tokenizer: Any, prompts: Sequence[list[int]], n: int, max_new_tokens: int,
           temperature: float, device: str, use_adapter: bool = True,
           greedy: bool = False) -> list[list[int]]:
    """n completions per prompt (token ids up to and including the first end-of-sequence), in one batched,
    left-padded `generate` call with the KV cache."""
    import contextlib

    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [ids for ids in prompts for _ in range(n)]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    was_training = model.training
    model.eval()
    adapter = contextlib.nullcontext() if use_adapter else model.disable_adapter()
    try:
        with torch.no_grad(), adapter:
            options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature,
                                                           "top_k": 0, "top_p": 1.0}
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, use_cache=True,
                                 **options)
    finally:
        model.train(was_training)
    completions = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        completions.append(row)
    return completions


def group_advantages(rewards: Any, group_size: int) -> Any:
    """(reward − group mean) / (group std + 1e-4): each completion against the others for its prompt."""
    grouped = rewards.view(-1, group_size)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + 1e-4)).view(-1)


def grpo_token_loss(logps: Any, old_logps: Any, ref_logps: Any, advantages: Any, beta: float, epsilon: float
                    ) -> tuple[Any, Any]:
    """(per-token loss, per-token KL): −min(r·A, clip(r, 1±ε)·A) + β·KL, with r = exp(logp − old_logp) and the
    k3 estimator KL = exp(ref − logp) − (ref − logp) − 1 (≥ 0, unbiased)."""
    import torch

    ratio = torch.exp(logps - old_logps)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages)
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    return -(surrogate - beta * kl), kl


def token_logps(model: Any, rendered: Sequence[Rendered], device: str, pad_id: int) -> tuple[Any, Any]:
    """(log-probabilities of every trained token, their row index); the output layer runs on those positions
    only."""
    import torch

    from .batching import collate
    from .evaluate import causal_lm_parts
    from .logits import processing_for

    batch = collate(rendered, device, "padded", pad_id)
    decoder, head = causal_lm_parts(model)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     use_cache=False).last_hidden_state
    keep = batch.targets != IGNORE
    logits = processing_for(model)(head(hidden[keep])).float()
    logps = -torch.nn.functional.cross_entropy(logits, batch.targets[keep], reduction="none")
    return logps, keep.nonzero()[:, 0]


class GRPO:
    name = "grpo"

    def __init__(self, config: RunConfig, loaded: Loaded, group: Group) -> None:
        self.config, self.loaded, self.group = config, loaded, group
        self.rewards = load_rewards(config.train.rewards, config.train.reward_code)

    def prepare(self, config: RunConfig, tokenizer: Any) -> PreparedData:
        return prepare_prompts(config.data, tokenizer, seed=config.train.seed)

    def _rollouts(self, items: Sequence[PromptItem], n: int, greedy: bool = False
                  ) -> tuple[list[Rendered], list[str], list[dict[str, float]]]:
        loaded, t = self.loaded, self.config.train
        room = min(t.grpo_max_new_tokens, self.config.data.max_seq_len - max(len(p.ids) for p in items))
        completions = sample(loaded.model, loaded.tokenizer, [p.ids for p in items], n, max(1, room),
                             t.grpo_temperature, loaded.device, greedy=greedy)
        rendered, texts, scores = [], [], []
        for index, ids in enumerate(completions):
            item = items[index // n]
            ids = ids or [loaded.tokenizer.eos_token_id]
            sequence = item.ids + ids
            targets = [IGNORE] * (len(item.ids) - 1) + ids + [IGNORE]
            rendered.append(Rendered(item.row, sequence, targets, len(sequence)))
            text = loaded.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(text)
            scores.append(score(self.rewards, item.text, text, item.fields))
        return rendered, texts, scores

    def step(self, micro: list[list[Any]], mixed: Any) -> StepResult:
        import torch

        model, loaded, t = self.loaded.model, self.loaded, self.config.train
        g = t.grpo_generations
        count = self.group.sum(sum(len(m) for m in micro) * g)
        loss_sum, kl_sum, length_sum, tokens, trained = 0.0, 0.0, 0, 0, 0
        all_scores: list[dict[str, float]] = []
        shown: list[dict[str, Any]] = []
        for items in micro:
            rendered, texts, scores = self._rollouts(items, g)
            totals = torch.tensor([sum(s.values()) for s in scores], dtype=torch.float32)
            advantages = group_advantages(totals, g).to(loaded.device)
            with mixed.autocast(model):
                logps, rows = token_logps(model, rendered, loaded.device, loaded.tokenizer.pad_token_id)
                with torch.no_grad(), model.disable_adapter():
                    ref, _ = token_logps(model, rendered, loaded.device, loaded.tokenizer.pad_token_id)
                per_token, kl = grpo_token_loss(logps, logps.detach(), ref, advantages[rows], t.grpo_beta,
                                                t.grpo_epsilon)
                lengths = torch.bincount(rows, minlength=len(rendered)).clamp(min=1)
                # The mean over each completion's tokens, then over completions (the GRPO paper's
                # normalization).
                per_sequence = torch.zeros(len(rendered), device=per_token.device).index_add(0, rows,
                                                                                              per_token)
                loss = (per_sequence / lengths).sum() / count
            mixed.backward(loss)
            loss_sum += float(loss.detach())
            kl_sum += float((torch.zeros(len(rendered), device=kl.device).index_add(0, rows, kl.detach())
                             / lengths).sum())
            length_sum += int(lengths.sum())
            tokens += sum(len(r.input_ids) for r in rendered)
            trained += sum(r.trained_tokens for r in rendered)
            all_scores.extend(scores)
            for index in range(0, len(texts), g):
                if len(shown) < SHOWN_COMPLETIONS:
                    item = items[index // g]
                    shown.append({"prompt": item.text[-300:], "completion": texts[index][:500],
                                  "rewards": scores[index]})
        stats: dict[str, Any] = {"kl": self.group.sum(kl_sum) / count,
                                 "completion_length": self.group.sum(length_sum) / count}
        stats |= _reward_stats(all_scores, self.group, count)
        stats["completions"] = shown
        return StepResult(loss_sum, tokens, int(self.group.sum(trained)), stats)

    def evaluate(self, examples: Sequence[Any]) -> dict[str, Any]:
        """The mean reward of greedy completions of the eval prompts (up to eval.samples of them)."""
        items = list(examples[: self.config.eval.samples])
        if not items:
            return {"eval_loss": None}
        scores: list[dict[str, float]] = []
        for start in range(0, len(items), self.config.train.batch_size):
            batch = items[start: start + self.config.train.batch_size]
            scores.extend(self._rollouts(batch, 1, greedy=True)[2])
        names = [name for name, _ in self.rewards]
        return {"eval_loss": None, "eval_reward": sum(sum(s.values()) for s in scores) / len(scores),
                "eval_rewards": {n: sum(s[n] for s in scores) / len(scores) for n in names}}


def _reward_stats(scores: list[dict[str, float]], group: Group, count: float) -> dict[str, Any]:
    out: dict[str, Any] = {"reward": group.sum(sum(sum(s.values()) for s in scores)) / count, "rewards": {}}
    for name in scores[0] if scores else {}:
        values = [s[name] for s in scores]
        mean = group.sum(sum(values)) / count
        square = group.sum(sum(v * v for v in values)) / count
        out["rewards"][name] = {"mean": mean, "std": max(0.0, square - mean * mean) ** 0.5}
    return out
