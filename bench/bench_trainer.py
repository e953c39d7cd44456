"""Trainer throughput: nbfinetune's loop vs stock HF Trainer + PEFT and a tuned HF baseline, in one process.

Same model, tokenizer, chat template, rendered rows (same loss masks), batches in the same order, LoRA
settings, optimizer, schedule, seed and number of steps. Throughput is real (non-pad) tokens per second
over warm steps only; each candidate's final eval loss shows quality parity.

    python bench/bench_trainer.py [--steps 12] [--warmup 2] [--model ID] [--r 8] [--batch-size 8]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from nbfinetune.config import DEFAULT_MODEL, RunConfig
from nbfinetune.core.batching import EpochSampler
from nbfinetune.core.evaluate import eval_loss
from nbfinetune.core.models import resolve_model
from nbfinetune.core.setup import load_for_training, load_tokenizer
from nbfinetune.core.trainer import train
from nbfinetune.data.prepare import prepare
from nbfinetune.data.render import IGNORE
from nbfinetune.runs import EventWriter


def make_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig.from_dict({
        "model": args.model,
        "data": {"max_seq_len": args.max_seq_len},
        "lora": {"r": args.r, "alpha": 2 * args.r},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed},
        "eval": {"generate": False},
    })


def warm_rate(tokens: list[int], ends: list[float], start: float, warmup: int) -> tuple[float, float]:
    """(warm tokens/s, warm-up seconds): tokens of steps after `warmup`, over the time they took."""
    t0 = ends[warmup - 1] if warmup else start
    return sum(tokens[warmup:]) / (ends[-1] - t0), t0 - start


def bench_ours(config: RunConfig, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        writer = EventWriter(Path(tmp) / "events.jsonl", "bench")
        train(config, writer.emit, lambda: False, tmp)
        writer.close()
        from nbfinetune.runs import read_events

        events = read_events(Path(tmp) / "events.jsonl").events
    steps = [e for e in events if e.type == "step"]
    started = next(e for e in events if e.type == "started")
    first_eval = next(e for e in events if e.type == "eval")
    # Step events carry wall time; training starts right after the step-0 eval.
    rate, warm_s = warm_rate([s["tokens"] for s in steps], [s.time for s in steps], first_eval.time, warmup)
    final_eval = [e for e in events if e.type == "eval"][-1]
    return {"tokens_per_s": rate, "warmup_s": warm_s, "eval_loss": final_eval["eval_loss"],
            "final_train_loss": steps[-1]["loss"], "device": started["device"]}


def bench_hf(config: RunConfig, warmup: int, tuned: bool) -> dict:
    from torch.utils.data import SequentialSampler
    from transformers import (DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainerCallback,
                              TrainingArguments)

    loaded = load_for_training(config, resolve_model(config.model))  # same peft model setup and seed
    torch.manual_seed(config.train.seed)
    data = prepare(config.data, loaded.tokenizer, seed=config.train.seed)
    sampler = EpochSampler(data.train, config.train.batch_size, config.train.seed)
    ordered = [example for _ in range(config.train.max_steps) for example in next(sampler)]
    rows = [{"input_ids": e.input_ids, "labels": [IGNORE] + e.targets[:-1]} for e in ordered]
    base_collator = (DataCollatorWithFlattening(return_position_ids=True) if tuned else
                     DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=IGNORE))
    batch_tokens: list[int] = []

    def collate(features: list[dict]) -> dict:
        batch_tokens.append(sum(len(f["input_ids"]) for f in features))
        return base_collator(features)

    step_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            step_ends.append(time.perf_counter())

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as tmp:
        arguments = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=config.train.batch_size, max_steps=config.train.max_steps,
            learning_rate=config.train.lr, lr_scheduler_type=config.train.schedule, warmup_steps=0,
            weight_decay=0.0, max_grad_norm=config.train.max_grad_norm, seed=config.train.seed,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=loaded.device == "cpu",
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
        trainer = InOrder(model=loaded.model, args=arguments, train_dataset=rows, data_collator=collate,
                          callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    rate, warm_s = warm_rate(batch_tokens[: len(step_ends)], step_ends, start, warmup)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_s": rate, "warmup_s": warm_s, "final_train_loss": losses[-1] if losses else None,
            "eval_loss": eval_loss(loaded.model, data.eval, config.train.batch_size, loaded.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    config = make_config(args)

    ours = bench_ours(config, args.warmup)
    print("nbfinetune:", json.dumps(ours), flush=True)
    stock = bench_hf(config, args.warmup, tuned=False)
    print("stock HF Trainer + PEFT (padding):", json.dumps(stock), flush=True)
    tuned = bench_hf(config, args.warmup, tuned=True)
    print("tuned HF (SDPA + padding-free):", json.dumps(tuned), flush=True)

    import peft
    import transformers

    result = {
        "model": args.model, "steps": args.steps, "warm_steps": args.steps - args.warmup,
        "batch_size": args.batch_size, "lora_r": args.r, "device": ours["device"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "tokens_per_s": round(ours["tokens_per_s"], 1),
        "stock_hf_tokens_per_s": round(stock["tokens_per_s"], 1),
        "tuned_hf_tokens_per_s": round(tuned["tokens_per_s"], 1),
        "speedup_vs_stock": round(ours["tokens_per_s"] / stock["tokens_per_s"], 3),
        "speedup_vs_tuned": round(ours["tokens_per_s"] / tuned["tokens_per_s"], 3),
        "eval_loss": ours["eval_loss"], "stock_hf_eval_loss": stock["eval_loss"], "tuned_hf_eval_loss": tuned["eval_loss"],
        "warmup_s": {"ours": round(ours["warmup_s"], 2), "stock": round(stock["warmup_s"], 2),
                     "tuned": round(tuned["warmup_s"], 2)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "python": platform.python_version()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
