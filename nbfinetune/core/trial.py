"""`nbft.try_rewards`: completions sampled from the base model, scored by every reward, before any
training."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..config import RunConfig

if TYPE_CHECKING:
    from .grpo import PromptItem


@dataclass
class RewardTrial:
    rows: list[dict[str, Any]]  # {"prompt", "completion", <reward name>: score, ..., "total"}
    rewards: list[str]

    def means(self) -> dict[str, float]:
        return {name: sum(r[name] for r in self.rows) / max(1, len(self.rows))
                for name in [*self.rewards, "total"]}

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["prompt", "completion", *self.rewards, "total"])
        body = "".join(
            "<tr>" + f"<td>{html.escape(r['prompt'][-120:])}</td>"
            + f"<td><pre>{html.escape(r['completion'])}</pre></td>"
            + "".join(f"<td>{r[name]:.3g}</td>" for name in [*self.rewards, "total"]) + "</tr>"
            for r in self.rows)
        means = ", ".join(f"{k} {v:.3g}" for k, v in self.means().items())
        return f"<p>mean: {html.escape(means)}</p><table><tr>{head}</tr>{body}</table>"

    def __repr__(self) -> str:
        return f"RewardTrial({len(self.rows)} completions; mean {self.means()})"


def reward_trial(config: RunConfig, prompts: int, n: int, max_new_tokens: int, temperature: float,
                 seed: int) -> RewardTrial:
    import torch

    from ..rewards import load_rewards, score
    from .grpo import prepare_prompts, sample
    from .models import resolve_model
    from .setup import load_base_model, load_tokenizer

    path = resolve_model(config.model)
    tokenizer = load_tokenizer(path)
    settings = config.data
    data = prepare_prompts(type(settings)(**{**vars(settings), "eval_fraction": 0.0}), tokenizer)
    model = load_base_model(path, "fp32", "cpu" if not torch.cuda.is_available() else "cuda")
    device = str(next(model.parameters()).device)
    rewards = load_rewards(config.train.rewards, config.train.reward_code)
    torch.manual_seed(seed)
    # PreparedData is typed for SFT's Rendered rows; prepare_prompts fills it with PromptItems.
    items = cast("list[PromptItem]", data.train[:prompts])
    completions = sample(model, tokenizer, [p.ids for p in items], n, max_new_tokens, temperature, device)
    rows = []
    for index, ids in enumerate(completions):
        item = items[index // n]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        scores = score(rewards, item.text, text, item.fields)
        rows.append({"prompt": item.text, "completion": text, **scores, "total": sum(scores.values())})
    return RewardTrial(rows, [name for name, _ in rewards])
