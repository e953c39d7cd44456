"""Early stopping on an evaluation metric; remembers the best evaluation so the run can keep its adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    patience: int
    metric: str = "eval_loss"
    min_delta: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    best_eval: dict[str, Any] | None = None  # eval_loss and metrics of the best evaluation
    bad_evals: int = 0

    @classmethod
    def from_history(cls, settings: Any, history: dict[str, Any]) -> EarlyStopping | None:
        """From eval settings, continuing a resumed run's state; None when early stopping is off."""
        if settings.early_stopping is None:
            return None
        saved = history.get("early_stopping") or {}
        state = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        state.update(patience=settings.early_stopping, metric=settings.early_stopping_metric,
                     min_delta=settings.early_stopping_min_delta)
        return cls(**state)

    def value(self, payload: dict[str, Any]) -> float | None:
        if self.metric == "eval_loss":
            return payload.get("eval_loss")
        return (payload.get("metrics") or {}).get(self.metric)

    def observe(self, step: int, payload: dict[str, Any]) -> bool:
        """Record an evaluation; True when it is the best so far."""
        value = self.value(payload)
        if value is None:
            raise ValueError(f"early stopping metric {self.metric!r} is not computed by this run's "
                             "evaluation")
        lower_is_better = self.metric == "eval_loss"
        improved = self.best_value is None or (value < self.best_value - self.min_delta if lower_is_better
                                               else value > self.best_value + self.min_delta)
        if improved:
            self.best_value, self.best_step, self.bad_evals = value, step, 0
            self.best_eval = {"eval_loss": payload.get("eval_loss"), "metrics": payload.get("metrics", {})}
        else:
            self.bad_evals += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.bad_evals >= self.patience

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("patience", "metric", "min_delta")}
