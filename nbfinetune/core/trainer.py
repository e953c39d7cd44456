"""The training recipe: `train(config, emit, should_stop, run_dir)`, the same on every backend.

A run is setup, then steps — each followed by evaluate-and-maybe-stop and maybe-checkpoint — then finish
(or cancel), all around one `TrainState`. A training method (core.methods: SFT, DPO; core.grpo: GRPO)
plugs into the step: it supplies the data rendering and the step's forward/backward; events, checkpoints,
cancel, resume, early stopping and distributed sums are the recipe's and shared by every method.

It only emits events; it imports no UI. Our own loop rather than transformers.Trainer because it
packs examples without padding and runs the output layer only on trained positions (see
bench/bench_trainer.py for the measured difference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..data.prepare import PreparedData
from ..metrics import default_metrics
from .batching import EpochSampler
from .checkpoints import (
    ADAPTER_FILE,
    adapter_step,
    load_adapter_weights,
    resume_point,
    save_adapter,
    save_checkpoint,
)
from .distributed import Group
from .early_stopping import EarlyStopping
from .grpo import GRPO
from .methods import DPO, SFT, Method
from .models import resolve_model
from .precision import MixedPrecision
from .run_eval import RunEvaluator
from .setup import Loaded, load_for_training


class Emit(Protocol):
    def __call__(self, type: str, **payload: Any) -> Any: ...


def method_for(config: RunConfig, loaded: Loaded, group: Group) -> Method:
    name = config.train.method
    if name == "dpo":
        return DPO(config, loaded, group)
    if name == "grpo":
        return GRPO(config, loaded, group)
    return SFT(config, loaded, group)


def total_steps(config: RunConfig, n_train: int) -> int:
    t = config.train
    if t.max_steps is not None:
        return t.max_steps
    per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum))
    return max(1, math.ceil(per_epoch * float(t.epochs or 1)))


def train(config: RunConfig, emit: Emit, should_stop: Callable[[], bool], run_dir: str | Path
          ) -> dict[str, Any]:
    started_at = time.time()
    group = Group.from_env()
    if not group.is_main:
        emit = _silent  # rank 0 speaks for the run
    try:
        return Recipe.setup(config, emit, Path(run_dir), group, started_at).run(should_stop)
    finally:
        group.close()


def _silent(type: str, **payload: Any) -> None:
    return None


@dataclass
class TrainState:
    """What changes as the run goes. A checkpoint keeps `step`, the sampler's position and `history`
    (first loss, base-model answers, early-stopping count), so a resumed run continues all three."""

    total: int  # the run's steps in all
    sampler: EpochSampler  # the data position
    history: dict[str, Any]
    started_at: float  # unix time; the events' train_time_s counts from it
    step: int = 0
    last_loss: float | None = None
    stopped_early: bool = False
    # Throughput counts training time only: evals and checkpoints in between are excluded.
    timed_tokens: int = 0
    timed_steps: int = 0
    train_seconds: float = 0.0

    @property
    def first_loss(self) -> float | None:
        return self.history.get("first_loss")

    def advance(self, loss: float, tokens: int, seconds: float) -> None:
        self.step += 1
        self.last_loss = loss
        if self.first_loss is None:
            self.history["first_loss"] = loss
        self.timed_tokens += tokens
        self.timed_steps += 1
        self.train_seconds += seconds

    def elapsed(self) -> float:
        return round(time.time() - self.started_at, 2)


@dataclass
class Recipe:
    """The parts `setup` builds once; the phases below run them. Rank 0 alone evaluates and saves."""

    config: RunConfig
    emit: Emit
    run_dir: Path
    group: Group
    loaded: Loaded
    method: Method
    data: PreparedData
    params: list[Any]  # the trainable (LoRA) tensors
    optimizer: Any
    scheduler: Any
    mixed: MixedPrecision
    evaluator: RunEvaluator
    stopper: EarlyStopping | None
    state: TrainState

    @classmethod
    def setup(cls, config: RunConfig, emit: Emit, run_dir: Path, group: Group, started_at: float) -> Recipe:
        """Model, method and data, optimizer and schedule, then the newest checkpoint if there is one."""
        import torch
        from transformers import get_scheduler

        emit("log", level="info", message=f"resolving model {config.model}")
        model_path = resolve_model(config.model)
        loaded = load_for_training(config, model_path)
        method = method_for(config, loaded, group)
        data = method.prepare(config, loaded.tokenizer)
        _report_data(emit, data)

        torch.manual_seed(config.train.seed)
        model, device, t = loaded.model, loaded.device, config.train
        steps = total_steps(config, len(data.train))
        params = [p for p in model.parameters() if p.requires_grad]
        # One fused kernel for all LoRA tensors on CUDA instead of a loop of small ones per tensor.
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                                      fused=device.startswith("cuda") or None)
        mixed = MixedPrecision.for_run(loaded.precision, device)
        scheduler = get_scheduler(t.schedule, optimizer, num_warmup_steps=t.warmup_steps,
                                  num_training_steps=steps)
        metric_names = config.eval.metrics or default_metrics([ref for _, ref in data.eval_cases])

        resumed = resume_point(run_dir, model, optimizer, scheduler)
        for broken, why in resumed.skipped:
            emit("log", level="warning", message=f"skipped the broken checkpoint {broken.name}: {why}")
        if resumed.path is not None:
            emit("log", level="info", message=f"resumed from checkpoint at step {resumed.step}")

        emit("started", model=config.model, model_path=model_path, device=device, precision=loaded.precision,
             total_steps=steps, resumed_step=resumed.step, trainable_params=loaded.trainable_params,
             total_params=loaded.total_params, train_rows=len(data.train), eval_rows=len(data.eval),
             data=data.report.to_dict() | {"problems": len(data.report.problems)}, metrics=metric_names,
             processes=group.world)

        stopper = EarlyStopping.from_history(config.eval, resumed.history)
        if stopper and stopper.metric not in ("eval_loss", *metric_names):
            raise ValueError(f"eval.early_stopping_metric {stopper.metric!r} is not computed by this run; "
                             f"its metrics are {', '.join(metric_names)} (or use 'eval_loss')")
        evaluator = RunEvaluator(config, loaded, data, metric_names, emit, resumed.history, method)
        sampler = EpochSampler(data.train, t.batch_size, t.seed, resumed.position)
        state = TrainState(steps, sampler, resumed.history, started_at, step=resumed.step)
        return cls(config, emit, run_dir, group, loaded, method, data, params, optimizer, scheduler, mixed,
                   evaluator, stopper, state)

    def run(self, should_stop: Callable[[], bool]) -> dict[str, Any]:
        state, group = self.state, self.group
        if state.step == 0 and group.is_main:
            self.evaluator.run(0, base=True)
        group.barrier()
        self.loaded.model.train()
        while state.step < state.total:
            if group.decide(should_stop() if group.is_main else False):
                return self.cancel()
            self.step()
            if self.evaluate_and_maybe_stop():
                break
            self.maybe_checkpoint()
        return self.finish()

    def step(self) -> None:
        """One optimizer step. The method runs forward and backward over the step's micro-batches (this is
        where methods plug in); summing over ranks, clipping, optimizer, schedule and event are shared."""
        t, state, group = self.config.train, self.state, self.group
        start = time.perf_counter()
        result = self.method.step([group.shard(next(state.sampler)) for _ in range(t.grad_accum)], self.mixed)
        group.sum_grads(self.params)
        loss = group.sum(result.loss)
        grad_norm = self.mixed.step(self.optimizer, self.params, t.max_grad_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = int(group.sum(result.tokens))
        state.advance(loss, tokens, time.perf_counter() - start)
        rate = state.timed_tokens / state.train_seconds if state.train_seconds > 0 else 0.0
        scale = {"loss_scale": self.mixed.loss_scale} if self.mixed.loss_scale is not None else {}
        self.emit("step", step=state.step, epoch=round(state.sampler.epoch_progress, 4), loss=loss,
                  lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=tokens,
                  trained_tokens=result.trained_tokens, tokens_per_s=rate,
                  eta_s=(state.total - state.step) * state.train_seconds / state.timed_steps, **scale,
                  **result.stats)

    def evaluate_and_maybe_stop(self) -> bool:
        """Evaluate every `eval.every` steps (the last step's evaluation is `finish`'s); True when early
        stopping has run out of patience, on every rank."""
        every, state, group, stopper = self.config.eval.every, self.state, self.group, self.stopper
        if not (every and state.step % every == 0 and state.step < state.total):
            return False
        exhausted = False
        if group.is_main:
            payload = self.evaluator.run(state.step)
            if stopper:
                self._observe(stopper, payload)
                exhausted = stopper.exhausted
        group.barrier()
        if not (stopper and group.decide(exhausted)):
            return False
        if group.is_main:
            self.emit("log", level="info", message=f"early stopping at step {state.step}: {stopper.metric} "
                      f"has not improved for {stopper.bad_evals} evaluations (best {stopper.best_value:.4g} "
                      f"at step {stopper.best_step})")
        state.stopped_early = True
        return True

    def maybe_checkpoint(self) -> None:
        every, state = self.config.train.save_every, self.state
        if every and state.step % every == 0 and state.step < state.total:
            if self.group.is_main:
                self._checkpoint()
            self.group.barrier()

    def finish(self) -> dict[str, Any]:
        """The final evaluation, the best adapter back in place under early stopping, the adapter saved."""
        state, stopper, evaluator = self.state, self.stopper, self.evaluator
        if not self.group.is_main:
            self.group.barrier()  # wait for rank 0's final evaluation and save
            return {"steps": state.step}
        # Stopped early right after an evaluation: that one is final (and already counted).
        fresh = evaluator.last.get("step") != state.step
        final = evaluator.run(state.step) if fresh else evaluator.last
        extra: dict[str, Any] = {}
        kept_step = state.step
        if stopper:
            if fresh:
                self._observe(stopper, final)
            if stopper.best_step is not None and stopper.best_step != state.step:
                # The run's adapter is the best evaluated one, as users of early stopping expect.
                load_adapter_weights(self.loaded.model, self.run_dir / "best-adapter")
                final = dict(stopper.best_eval or {})
                self.emit("log", level="info", message=f"the adapter is the best evaluated one: step "
                          f"{stopper.best_step} ({stopper.metric} {stopper.best_value:.4g})")
            kept_step = stopper.best_step if stopper.best_step is not None else state.step
            extra = {"best_step": stopper.best_step, "stopped_early": state.stopped_early}
        loaded = self.loaded
        adapter = save_adapter(loaded.model, loaded.tokenizer, self.run_dir / "adapter", step=kept_step)
        summary = {"first_loss": state.first_loss, "last_loss": state.last_loss,
                   "eval_loss": final.get("eval_loss"), "metrics": final.get("metrics", {}),
                   "base_metrics": state.history.get("base_metrics", {}),
                   "steps": state.step, "train_time_s": state.elapsed(), **extra}
        self.group.barrier()
        self.emit("finished", adapter_path=str(adapter), summary=summary)
        return {"adapter_path": str(adapter), **summary}

    def cancel(self) -> dict[str, Any]:
        """Keep the adapter and a resumable checkpoint of where we stopped.

        An adapter already saved from as many steps or more (a finished run's, or one saved before a resume
        that was cancelled at once) is kept: a cancel never replaces a result with a less trained one."""
        step = self.state.step
        if not self.group.is_main:
            return {"cancelled": True, "steps": step}
        directory = self.run_dir / "adapter"
        kept = adapter_step(directory)
        if step > 0 and (kept is None or kept < step):
            save_adapter(self.loaded.model, self.loaded.tokenizer, directory, step=step)
        # Cancelled before the first step with no adapter from before: there is nothing trained to keep.
        has_adapter = step > 0 or kept is not None or (directory / ADAPTER_FILE).is_file()
        if step > 0:
            self._checkpoint()
        path = str(directory) if has_adapter else None
        self.emit("cancelled", step=step, adapter_path=path, train_time_s=self.state.elapsed())
        return {"adapter_path": path, "cancelled": True, "steps": step}

    def _checkpoint(self) -> None:
        state, loaded = self.state, self.loaded
        path = save_checkpoint(self.run_dir / "checkpoints" / f"step-{state.step}", loaded.model,
                               loaded.tokenizer, self.optimizer, self.scheduler, state.step,
                               state.sampler.position, state.history)
        self.emit("checkpoint", step=state.step, path=str(path))

    def _observe(self, stopper: EarlyStopping, payload: dict[str, Any]) -> None:
        """Count an evaluation for early stopping; keep the adapter when it is the best so far."""
        if stopper.observe(self.state.step, payload):
            save_adapter(self.loaded.model, self.loaded.tokenizer, self.run_dir / "best-adapter")
        self.state.history["early_stopping"] = stopper.state()


def _report_data(emit: Emit, data: PreparedData) -> None:
    report = data.report
    emit("log", level="info", message=f"data: {report.format} format, {report.valid} of {report.rows} rows "
                                      f"usable, {len(data.train)} train / {len(data.eval)} eval")
    for problem in report.problems[:20]:
        emit("log", level="warning", message=str(problem))
    if len(report.problems) > 20:
        emit("log", level="warning", message=f"... and {len(report.problems) - 20} more row problems")
