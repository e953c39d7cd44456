"""The training loop: `train(config, emit, should_stop, run_dir)`, the same on every backend.

It only emits events; it imports no UI. Our own loop rather than transformers.Trainer because it
packs examples without padding and runs the output layer only on trained positions (see
bench/bench_trainer.py for the measured difference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..data.prepare import PreparedData
from .batching import DataPosition, EpochSampler
from .distributed import Group
from .checkpoints import adapter_step, load_adapter_weights, resume_point, save_adapter, save_checkpoint
from .early_stopping import EarlyStopping
from .evaluate import GenerationEval, evaluate_generation
from .methods import Method, method_for
from .metrics import default_metrics
from .models import resolve_model
from .precision import MixedPrecision
from .setup import Loaded, load_for_training


class Emit(Protocol):
    def __call__(self, type: str, **payload: Any) -> Any: ...


def total_steps(config: RunConfig, n_train: int) -> int:
    t = config.train
    if t.max_steps is not None:
        return t.max_steps
    per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum))
    return max(1, math.ceil(per_epoch * float(t.epochs or 1)))


def train(config: RunConfig, emit: Emit, should_stop: Callable[[], bool], run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    started_at = time.time()
    group = Group.from_env()
    if not group.is_main:
        emit = _silent  # rank 0 speaks for the run
    try:
        return _train(config, emit, should_stop, run_dir, group, started_at)
    finally:
        group.close()


def _silent(type: str, **payload: Any) -> None:
    return None


def _train(config: RunConfig, emit: Emit, should_stop: Callable[[], bool], run_dir: Path, group: Group,
           started_at: float) -> dict[str, Any]:
    import torch
    from transformers import get_scheduler

    emit("log", level="info", message=f"resolving model {config.model}")
    model_path = resolve_model(config.model)
    loaded = load_for_training(config, model_path)
    method = method_for(config, loaded, group)
    data = method.prepare(config, loaded.tokenizer)
    _report_data(emit, data)

    torch.manual_seed(config.train.seed)
    model, device = loaded.model, loaded.device
    steps = total_steps(config, len(data.train))
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel for all LoRA tensors on CUDA instead of a loop of small ones per tensor.
    optimizer = torch.optim.AdamW(params, lr=config.train.lr, weight_decay=config.train.weight_decay,
                                  fused=device.startswith("cuda") or None)
    mixed = MixedPrecision.for_run(loaded.precision, device)
    scheduler = get_scheduler(config.train.schedule, optimizer, num_warmup_steps=config.train.warmup_steps,
                              num_training_steps=steps)
    metric_names = config.eval.metrics or default_metrics([ref for _, ref in data.eval_cases])

    resumed = resume_point(run_dir, model, optimizer, scheduler)
    step, position, history = resumed.step, resumed.position, resumed.history
    for broken, why in resumed.skipped:
        emit("log", level="warning", message=f"skipped the broken checkpoint {broken.name}: {why}")
    if resumed.path is not None:
        emit("log", level="info", message=f"resumed from checkpoint at step {step}")

    emit("started", model=config.model, model_path=model_path, device=device, precision=loaded.precision,
         total_steps=steps, resumed_step=step, trainable_params=loaded.trainable_params,
         total_params=loaded.total_params, train_rows=len(data.train), eval_rows=len(data.eval),
         data=data.report.to_dict() | {"problems": len(data.report.problems)}, metrics=metric_names,
         processes=group.world)

    stopper = EarlyStopping.from_history(config.eval, history)
    if stopper and stopper.metric not in ("eval_loss", *metric_names):
        raise ValueError(f"eval.early_stopping_metric {stopper.metric!r} is not computed by this run; its metrics "
                         f"are {', '.join(metric_names)} (or use 'eval_loss')")
    evaluator = _Evaluator(config, loaded, data, metric_names, emit, history, method)
    if step == 0 and group.is_main:
        evaluator.run(0, base=True)
    group.barrier()

    sampler = EpochSampler(data.train, config.train.batch_size, config.train.seed, position)
    model.train()
    first_loss = history.get("first_loss")
    loss_value = None
    # Throughput counts training time only: evals and checkpoints in between are excluded.
    window_tokens, window_steps, train_seconds = 0, 0, 0.0
    while step < steps:
        if group.decide(should_stop() if group.is_main else False):
            if not group.is_main:
                return {"cancelled": True, "steps": step}
            return _stop(emit, run_dir, loaded, optimizer, scheduler, step, sampler.position, evaluator.history,
                         started_at)
        step_start = time.perf_counter()
        result = method.step([group.shard(next(sampler)) for _ in range(config.train.grad_accum)], mixed)
        trained = result.trained_tokens
        group.sum_grads(params)
        loss_sum = group.sum(result.loss)
        grad_norm = mixed.step(optimizer, params, config.train.max_grad_norm)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - step_start
        step += 1
        loss_value = loss_sum
        first_loss = first_loss if first_loss is not None else loss_value
        evaluator.history["first_loss"] = first_loss
        tokens = int(group.sum(result.tokens))
        window_tokens += tokens
        window_steps += 1
        rate = window_tokens / train_seconds if train_seconds > 0 else 0.0
        emit("step", step=step, epoch=round(sampler.epoch_progress, 4), loss=loss_value,
             lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=tokens, trained_tokens=trained,
             tokens_per_s=rate, eta_s=(steps - step) * train_seconds / window_steps,
             **({"loss_scale": mixed.loss_scale} if mixed.loss_scale is not None else {}), **result.stats)
        if config.eval.every and step % config.eval.every == 0 and step < steps:
            exhausted = False
            if group.is_main:
                payload = evaluator.run(step)
                if stopper:
                    _observe(stopper, step, payload, loaded, run_dir, evaluator.history)
                    exhausted = stopper.exhausted
            group.barrier()
            if stopper and group.decide(exhausted):
                if group.is_main:
                    emit("log", level="info", message=f"early stopping at step {step}: {stopper.metric} has not "
                         f"improved for {stopper.bad_evals} evaluations (best {stopper.best_value:.4g} at step "
                         f"{stopper.best_step})")
                break
        if config.train.save_every and step % config.train.save_every == 0 and step < steps:
            if group.is_main:
                path = save_checkpoint(run_dir / "checkpoints" / f"step-{step}", model, loaded.tokenizer, optimizer,
                                       scheduler, step, sampler.position, evaluator.history)
                emit("checkpoint", step=step, path=str(path))
            group.barrier()

    if not group.is_main:
        group.barrier()  # wait for rank 0's final evaluation and save
        return {"steps": step}
    # Stopped early right after an evaluation: that one is final (and already counted).
    fresh = evaluator.last.get("step") != step
    final = evaluator.run(step) if fresh else evaluator.last
    extra: dict[str, Any] = {}
    if stopper:
        if fresh:
            _observe(stopper, step, final, loaded, run_dir, evaluator.history)
        if stopper.best_step is not None and stopper.best_step != step:
            # The run's adapter is the best evaluated one, as users of early stopping expect.
            load_adapter_weights(model, run_dir / "best-adapter")
            final = dict(stopper.best_eval or {})
            emit("log", level="info", message=f"the adapter is the best evaluated one: step {stopper.best_step} "
                                              f"({stopper.metric} {stopper.best_value:.4g})")
        extra = {"best_step": stopper.best_step, "stopped_early": step < steps}
    adapter = save_adapter(model, loaded.tokenizer, run_dir / "adapter", step=stopper.best_step if stopper and
                           stopper.best_step is not None else step)
    summary = {"first_loss": first_loss, "last_loss": loss_value, "eval_loss": final.get("eval_loss"),
               "metrics": final.get("metrics", {}), "base_metrics": evaluator.history.get("base_metrics", {}),
               "steps": step, "train_time_s": round(time.time() - started_at, 2), **extra}
    group.barrier()
    emit("finished", adapter_path=str(adapter), summary=summary)
    return {"adapter_path": str(adapter), **summary}


def _observe(stopper: EarlyStopping, step: int, payload: dict[str, Any], loaded: Loaded, run_dir: Path,
             history: dict[str, Any]) -> None:
    """Count an evaluation for early stopping; keep the adapter when it is the best so far."""
    if stopper.observe(step, payload):
        save_adapter(loaded.model, loaded.tokenizer, run_dir / "best-adapter")
    history["early_stopping"] = stopper.state()


def _report_data(emit: Emit, data: PreparedData) -> None:
    report = data.report
    emit("log", level="info", message=f"data: {report.format} format, {report.valid} of {report.rows} rows usable, "
                                      f"{len(data.train)} train / {len(data.eval)} eval")
    for problem in report.problems[:20]:
        emit("log", level="warning", message=str(problem))
    if len(report.problems) > 20:
        emit("log", level="warning", message=f"... and {len(report.problems) - 20} more row problems")


class _Evaluator:
    """Eval loss plus generation metrics; base-model answers are computed once and kept for comparison."""

    def __init__(self, config: RunConfig, loaded: Loaded, data: PreparedData, metric_names: list[str], emit: Emit,
                 history: dict[str, Any], method: Method) -> None:
        self.config, self.loaded, self.data, self.metric_names, self.emit = config, loaded, data, metric_names, emit
        self.method = method
        self.history = history
        self.cases = data.eval_cases[: config.eval.samples] if config.eval.generate else []
        self.last: dict[str, Any] = {}

    def run(self, step: int, base: bool = False) -> dict[str, Any]:
        loaded = self.loaded
        payload: dict[str, Any] = {"step": step, **self.method.evaluate(self.data.eval)}
        if self.cases:
            result: GenerationEval = evaluate_generation(
                loaded.model, loaded.tokenizer, self.cases, self.metric_names, self.config.eval.max_new_tokens,
                loaded.device, use_adapter=not base, base_predictions=self.history.get("base_predictions"))
            if base:
                self.history["base_metrics"] = result.metrics
                self.history["base_predictions"] = result.predictions
            payload.update(metrics=result.metrics, base_metrics=self.history.get("base_metrics", {}),
                           samples=result.samples)
        self.emit("eval", **payload)
        self.last = payload
        return payload


def _stop(emit: Emit, run_dir: Path, loaded: Loaded, optimizer: Any, scheduler: Any, step: int,
          position: DataPosition, history: dict[str, Any], started_at: float) -> dict[str, Any]:
    """Cancelled: keep the adapter and a resumable checkpoint of where we stopped.

    An adapter already saved from as many steps or more (a finished run's, or one saved before a resume
    that was cancelled at once) is kept: a cancel never replaces a result with a less trained one."""
    adapter: Path | None = run_dir / "adapter"
    kept = adapter_step(adapter)
    if step > 0 and (kept is None or kept < step):
        save_adapter(loaded.model, loaded.tokenizer, adapter, step=step)
    elif kept is None and not (adapter / "adapter_model.safetensors").is_file():
        adapter = None  # cancelled before the first step: there is nothing trained to keep
    if step > 0:
        path = save_checkpoint(run_dir / "checkpoints" / f"step-{step}", loaded.model, loaded.tokenizer, optimizer,
                               scheduler, step, position, history)
        emit("checkpoint", step=step, path=str(path))
    path_text = str(adapter) if adapter is not None else None
    emit("cancelled", step=step, adapter_path=path_text, train_time_s=round(time.time() - started_at, 2))
    return {"adapter_path": path_text, "cancelled": True, "steps": step}
