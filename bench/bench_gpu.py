"""GPU training throughput: nbfinetune's step vs stock HF Trainer + PEFT (padding) and HF + PEFT with a
padding-free collator on the best attention available, in one process, on models built from configs
with random weights (no hub).

    python bench/bench_gpu.py [--models qwen2.5-0.5b,llama-3.2-1b,llama-3.1-8b]
                              [--shapes 8x512,8x2048,16x2048]
                              [--lengths uniform,lognormal,shared-prefix] [--steps 8] [--warmup 3]
    python bench/bench_gpu.py --smoke     # a tiny model, a tiny batch, fp32 on CPU: checks the script runs

LoRA r=16 on all linear layers, bf16 (fp16 where the GPU has no bf16), NF4 base for the 8B model.
Per row: real (non-pad) tokens/s over warm steps, MFU (4·N per token for the frozen-base matmuls plus
attention FLOPs, over the GPU's dense peak), peak memory, and the ratios to both baselines. The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

import torch

from nbfinetune.config import RunConfig
from nbfinetune.core.batching import collate, pick_layout
from nbfinetune.core.evaluate import summed_loss
from nbfinetune.core.precision import MixedPrecision
from nbfinetune.core.setup import load_for_training
from nbfinetune.data.render import IGNORE, Rendered

# Public shapes of the models users fine-tune most (config.json values).
MODELS = {
    "qwen2.5-0.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                         tie_word_embeddings=True)),
    "llama-3.2-1b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                         head_dim=64, tie_word_embeddings=True)),
    "llama-3.1-8b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                         tie_word_embeddings=False)),
    "smoke": ("LlamaConfig", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
}
QUANTIZED = {"llama-3.1-8b"}


def build_model(name: str, directory: Path) -> Path:
    import transformers

    class_name, values = MODELS[name]
    config = getattr(transformers, class_name)(max_position_embeddings=4096, **values)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if name != "smoke"
                                                              else torch.float32)
    model.save_pretrained(directory)
    del model
    return directory


def lengths(kind: str, batch: int, width: int, rng: random.Random) -> list[int]:
    if kind == "lognormal":
        return [max(16, min(width, int(rng.lognormvariate(math.log(width / 4), 0.8)))) for _ in range(batch)]
    if kind == "uniform":
        return [rng.randint(width // 8, width) for _ in range(batch)]
    return [width] * batch  # shared-prefix: full rows, of which 3/4 is a common prompt


def make_batches(kind: str, batch: int, width: int, steps: int, vocab: int,
                 seed: int = 0) -> list[list[Rendered]]:
    """Synthetic rows; loss on the last quarter (the "answer"), the prompt before it is masked."""
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab) for _ in range(width * 3 // 4)]
    out = []
    for _ in range(steps):
        rows = []
        for i, n in enumerate(lengths(kind, batch, width, rng)):
            if kind == "shared-prefix":
                ids = (prefix + [rng.randrange(vocab) for _ in range(n // 4)])[:n]
            else:
                ids = [rng.randrange(vocab) for _ in range(n)]
            answer = max(1, n // 4)
            targets = [IGNORE] * (n - answer) + ids[n - answer + 1:] + [IGNORE]
            rows.append(Rendered(row=i, input_ids=ids, targets=targets, full_length=n))
        out.append(rows)
    return out


def model_flops(n_params: int, layers: int, attention_width: int,
                batches: list[list[Rendered]]) -> list[float]:
    """Per step: 4·N per token (forward + input gradient through the frozen weights) plus attention:
    QKᵀ and AV, 4·ctx·width per token forward, 3× that with backward, causal (mean context (L+1)/2)."""
    out = []
    for rows in batches:
        tokens = sum(len(r.input_ids) for r in rows)
        attention = sum(12 * layers * attention_width * len(r.input_ids) * (len(r.input_ids) + 1) / 2
                        for r in rows)
        out.append(4 * n_params * tokens + attention)
    return out


def run_ours(config: RunConfig, path: str, batches: list[list[Rendered]]) -> tuple[list[float], dict]:
    loaded = load_for_training(config, path)
    model, device = loaded.model, loaded.device
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda" or None)
    mixed = MixedPrecision.for_run(loaded.precision, device)
    layout = pick_layout("auto", model)
    ends = []
    for rows in batches:
        batch = collate(rows, device, layout, loaded.tokenizer.pad_token_id)
        with mixed.autocast(model):
            loss = summed_loss(model, batch) / batch.trained_tokens
        mixed.backward(loss)
        mixed.step(optimizer, params, 1.0)
        optimizer.zero_grad(set_to_none=True)
        _sync()
        ends.append(time.perf_counter())
    info = {"layout": layout, "precision": loaded.precision}
    del loaded, model, optimizer
    return ends, info


def run_hf(config: RunConfig, path: str, batches: list[list[Rendered]],
           padding_free: bool) -> tuple[list[float], dict]:
    from torch.utils.data import SequentialSampler
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    loaded = load_for_training(config, path)  # the same peft model and seed
    attention = "sdpa"
    if padding_free and torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            attention = "flash_attention_2"
        except ImportError:
            pass
    loaded.model.get_base_model().set_attn_implementation(attention)
    rows = [{"input_ids": r.input_ids, "labels": [IGNORE] + r.targets[:-1]} for rows in batches for r in rows]
    collator = (DataCollatorWithFlattening(return_position_ids=True) if padding_free
                else DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=IGNORE))
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            _sync()
            ends.append(time.perf_counter())

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    half = loaded.precision
    with tempfile.TemporaryDirectory() as tmp:
        arguments = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=len(batches[0]), max_steps=len(batches),
            learning_rate=1e-4, warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[],
            use_cpu=loaded.device == "cpu",
            bf16=half == "bf16", fp16=half == "fp16", dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=True)
        InOrder(model=loaded.model, args=arguments, train_dataset=rows, data_collator=collator,
                callbacks=[Clock()]).train()
    info = {"attention": attention}
    del loaded
    return ends, info


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn, *args) -> dict:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    ends, info = fn(*args)
    # CPU: the process high-water mark
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"ends": ends, "start": start, "peak_memory_gib": round(peak / 2 ** 30, 3), **info}


def summarize(result: dict, batches: list[list[Rendered]], flops: list[float], warmup: int,
              peak_tflops: float | None) -> dict:
    ends = result.pop("ends")
    start = result.pop("start")
    t0 = ends[warmup - 1] if warmup else start
    seconds = ends[-1] - t0
    tokens = sum(len(r.input_ids) for rows in batches[warmup:] for r in rows)
    rate = tokens / seconds if seconds > 0 else 0.0
    mfu = (sum(flops[warmup:]) / seconds / (peak_tflops * 1e12)) if peak_tflops and seconds > 0 else None
    return {"tokens_per_s": round(rate, 1), "mfu": round(mfu, 4) if mfu is not None else None,
            "warmup_s": round(t0 - start, 2), **result}


def bench_row(model: str, path: str, shape: str, kind: str, steps: int, warmup: int,
              peak: float | None) -> dict:
    import transformers

    batch, width = (int(x) for x in shape.split("x"))
    values = MODELS[model][1]
    batches = make_batches(kind, batch, width, steps, values["vocab_size"])
    heads, hidden = values["num_attention_heads"], values["hidden_size"]
    head_dim = values.get("head_dim") or hidden // heads
    config_class = getattr(transformers, MODELS[model][0])
    with torch.device("meta"):  # shapes only, no memory
        skeleton = transformers.AutoModelForCausalLM.from_config(config_class(**values))
    n = sum(p.numel() for p in skeleton.parameters()) - values["vocab_size"] * hidden
    if values.get("tie_word_embeddings"):
        n += values["vocab_size"] * hidden  # the head still multiplies
    flops = model_flops(n, values["num_hidden_layers"], heads * head_dim, batches)
    train = {"precision": "fp32" if model == "smoke" else "auto", "batch_size": batch,
             "quantization": "nf4" if model in QUANTIZED and torch.cuda.is_available() else None}
    config = RunConfig.from_dict({"model": path, "lora": {"r": 16, "alpha": 32}, "train": train,
                                  "data": {"max_seq_len": width}})
    row = {"model": model, "batch": shape, "lengths": kind, "quantization": train["quantization"]}
    contenders = (("ours", run_ours, ()), ("stock_hf", run_hf, (False,)),
                  ("padding_free_hf", run_hf, (True,)))
    for name, fn, extra in contenders:
        row[name] = summarize(measure(fn, config, path, batches, *extra), batches, flops, warmup, peak)
    for base in ("stock_hf", "padding_free_hf"):
        if row[base]["tokens_per_s"]:
            row[f"speedup_vs_{base}"] = round(row["ours"]["tokens_per_s"] / row[base]["tokens_per_s"], 3)
        if row[base]["peak_memory_gib"] and torch.cuda.is_available():
            row[f"memory_vs_{base}"] = round(row["ours"]["peak_memory_gib"] / row[base]["peak_memory_gib"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-0.5b,llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--shapes", default="8x512,8x2048,16x2048")
    parser.add_argument("--lengths", default="uniform,lognormal,shared-prefix")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and batch on whatever device there is")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.shapes, args.steps, args.warmup = "smoke", "2x32", 3, 1
    from nbfinetune.pricing import device_peak
    from nbfinetune.testing import make_tiny_model

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    peak = device_peak(gpu) if gpu else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = make_tiny_model(Path(tmp) / "tokenizer")  # any tokenizer: the data are token ids
        for model in args.models.split(","):
            path = build_model(model, Path(tmp) / model)
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
            for shape in args.shapes.split(","):
                for kind in args.lengths.split(","):
                    row = bench_row(model, str(path), shape, kind, args.steps, args.warmup,
                                    peak[0] if peak else None)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    import peft
    import transformers

    print(json.dumps({"gpu": gpu, "peak_tflops": peak[0] if peak else None,
                      "peak_dtype": peak[1] if peak else None,
                      "steps": args.steps, "warm_steps": args.steps - args.warmup, "rows": rows,
                      "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                   "peft": peft.__version__, "python": platform.python_version(),
                                   "cuda": torch.version.cuda}}))


if __name__ == "__main__":
    main()
