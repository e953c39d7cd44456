"""Trainer throughput: nbfinetune's loop vs stock HF Trainer + PEFT and a tuned HF baseline, in one process.

Same model, tokenizer, chat template, rendered rows (same loss masks), batches in the same order, LoRA
settings, optimizer, schedule, seed and number of steps. Throughput is real (non-pad) tokens per second
over warm steps only; each candidate's final eval loss shows quality parity.

    python bench/bench_trainer.py [--data sample:people|varied|PATH] [--steps 12] [--warmup 2]
                                  [--model ID] [--r 8]

Data: `sample:people` (the demo set: every row starts with the same system prompt and instruction,
lengths nearly equal) or `varied` (generated here: five different instructions, answers from a few
tokens to ~200, so rows share only the template's system prompt and padding is heavy) or a file.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from nbfinetune.config import DEFAULT_MODEL, RunConfig
from nbfinetune.core.batching import EpochSampler
from nbfinetune.core.evaluate import eval_loss
from nbfinetune.core.models import resolve_model
from nbfinetune.core.setup import load_for_training
from nbfinetune.core.trainer import train
from nbfinetune.data.prepare import prepare
from nbfinetune.data.render import IGNORE
from nbfinetune.runs import EventWriter

WORDS = ("river stone lantern maple copper orbit violet harbor meadow signal quartz ember willow canyon "
         "falcon prism cedar tundra velvet beacon glacier saffron thistle cobalt juniper sparrow "
         "marble").split()


def varied_rows(n: int, seed: int) -> list[dict]:
    """Instruction rows whose prompts start differently and whose answers vary from ~3 to ~200 tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.choice([3, 5, 8, 12, 20, 30, 45]))
        kind = rng.randrange(5)
        if kind == 0:
            row = ("Sort these words alphabetically: " + " ".join(words), " ".join(sorted(words)))
        elif kind == 1:
            start = rng.randrange(100)
            row = (f"List the numbers from {start} to {start + len(words)}.",
                   ", ".join(str(i) for i in range(start, start + len(words) + 1)))
        elif kind == 2:
            row = ("Repeat in upper case: " + " ".join(words), " ".join(words).upper())
        elif kind == 3:
            row = ("Reverse the order of the words: " + " ".join(words), " ".join(reversed(words)))
        else:
            row = ("How many words are there in: " + " ".join(words), str(len(words)))
        rows.append({"instruction": row[0], "output": row[1]})
    return rows


def data_source(name: str, seed: int, directory: Path) -> tuple[str, str | None]:
    """(train source, eval source) for --data."""
    if name != "varied":
        return name, None
    paths = []
    for split, n in (("train", 480), ("eval", 24)):
        path = directory / f"varied_{split}.jsonl"
        rows = varied_rows(n, seed + len(split))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths.append(str(path))
    return paths[0], paths[1]


def make_config(args: argparse.Namespace, directory: Path) -> RunConfig:
    train_source, eval_source = data_source(args.data, args.seed, directory)
    data = {"path": train_source, "max_seq_len": args.max_seq_len}
    if eval_source:
        data["eval_path"] = eval_source
    return RunConfig.from_dict({
        "model": args.model,
        "data": data,
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
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    loaded = load_for_training(config, resolve_model(config.model))  # same peft model setup and seed
    loaded.model.get_base_model().set_attn_implementation("sdpa")  # stock transformers attention
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
            output_dir=tmp, per_device_train_batch_size=config.train.batch_size,
            max_steps=config.train.max_steps, learning_rate=config.train.lr,
            lr_scheduler_type=config.train.schedule, warmup_steps=0,
            weight_decay=0.0, max_grad_norm=config.train.max_grad_norm, seed=config.train.seed,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=loaded.device == "cpu",
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
        trainer = InOrder(model=loaded.model, args=arguments, train_dataset=rows, data_collator=collate,
                          callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    rate, warm_s = warm_rate(batch_tokens[: len(step_ends)], step_ends, start, warmup)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    base = loaded.model.get_base_model()
    embedding, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    # The output layer does matmul work even when it shares its weight with the input embedding.
    n = (sum(p.numel() for p in base.parameters()) - embedding.numel()
         + (head.numel() if head is embedding else 0))
    return {"tokens_per_s": rate, "warmup_s": warm_s, "final_train_loss": losses[-1] if losses else None,
            "eval_loss": eval_loss(loaded.model, data.eval, config.train.batch_size, loaded.device),
            "params": n}


def mfu(tokens_per_s: float, n: int) -> float | None:
    """Model FLOPs utilisation on a GPU: 4·N FLOPs per real token for LoRA (N without the input
    embedding, which is a lookup) over the card's dense bf16 peak (fp16 on a T4). Tokens of a shared prefix
    count as processed (model FLOPs, by definition), so it can credit work the shared layout skipped."""
    if not torch.cuda.is_available():
        return None
    from nbfinetune.pricing import device_peak

    peak = device_peak(torch.cuda.get_device_name())
    if peak is None:
        return None
    return round(4 * n * tokens_per_s / (peak[0] * 1e12), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default="sample:people", help="sample:people, varied, or a dataset path")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    data_dir = tempfile.TemporaryDirectory()
    config = make_config(args, Path(data_dir.name))

    ours = bench_ours(config, args.warmup)
    print("nbfinetune:", json.dumps(ours), flush=True)
    stock = bench_hf(config, args.warmup, tuned=False)
    print("stock HF Trainer + PEFT (padding):", json.dumps(stock), flush=True)
    tuned = bench_hf(config, args.warmup, tuned=True)
    print("tuned HF (SDPA + padding-free):", json.dumps(tuned), flush=True)

    import peft
    import transformers

    result = {
        "model": args.model, "data": args.data, "steps": args.steps, "warm_steps": args.steps - args.warmup,
        "batch_size": args.batch_size, "lora_r": args.r, "device": ours["device"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "tokens_per_s": round(ours["tokens_per_s"], 1),
        "stock_hf_tokens_per_s": round(stock["tokens_per_s"], 1),
        "tuned_hf_tokens_per_s": round(tuned["tokens_per_s"], 1),
        "speedup_vs_stock": round(ours["tokens_per_s"] / stock["tokens_per_s"], 3),
        "speedup_vs_tuned": round(ours["tokens_per_s"] / tuned["tokens_per_s"], 3),
        "mfu": mfu(ours["tokens_per_s"], stock["params"]),
        "stock_hf_mfu": mfu(stock["tokens_per_s"], stock["params"]),
        "eval_loss": ours["eval_loss"], "stock_hf_eval_loss": stock["eval_loss"],
        "tuned_hf_eval_loss": tuned["eval_loss"],
        "warmup_s": {"ours": round(ours["warmup_s"], 2), "stock": round(stock["warmup_s"], 2),
                     "tuned": round(tuned["warmup_s"], 2)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
