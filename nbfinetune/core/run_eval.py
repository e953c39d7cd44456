"""A run's evaluations as the recipe makes them: the method's eval loss and figures plus generation metrics,
emitted as `eval` events (with `judge`: the calls, tokens and cost the LLM judge took for that evaluation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import RunConfig
from ..data.prepare import PreparedData
from ..metrics import usage_since, usage_totals
from .evaluate import evaluate_generation
from .methods import Method
from .setup import Loaded


class RunEvaluator:
    """The base model's answers are computed once (the evaluation at step 0) and kept in the run's history,
    which checkpoints carry, so every later evaluation, resumed or not, is compared against them."""

    def __init__(self, config: RunConfig, loaded: Loaded, data: PreparedData, metric_names: list[str],
                 emit: Callable[..., Any], history: dict[str, Any], method: Method) -> None:
        self.config, self.loaded, self.data, self.method = config, loaded, data, method
        self.metric_names, self.emit, self.history = metric_names, emit, history
        self.cases = data.eval_cases[: config.eval.samples] if config.eval.generate else []
        self.last: dict[str, Any] = {}  # the latest evaluation's payload

    def run(self, step: int, base: bool = False) -> dict[str, Any]:
        loaded = self.loaded
        payload: dict[str, Any] = {"step": step, **self.method.evaluate(self.data.eval)}
        if self.cases:
            before = usage_totals(self.metric_names)
            result = evaluate_generation(loaded.model, loaded.tokenizer, self.cases, self.metric_names,
                                         self.config.eval.max_new_tokens, loaded.device, use_adapter=not base,
                                         base_predictions=self.history.get("base_predictions"))
            if base:
                self.history["base_metrics"] = result.metrics
                self.history["base_predictions"] = result.predictions
            payload.update(metrics=result.metrics, base_metrics=self.history.get("base_metrics", {}),
                           samples=result.samples)
            # What a paid metric (the LLM judge) spent on this evaluation; the run's fold adds them up.
            spent = usage_since(before, usage_totals(self.metric_names))
            if spent:
                payload["judge"] = spent
        self.emit("eval", **payload)
        self.last = payload
        return payload
