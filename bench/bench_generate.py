"""Chat generation: time to first token and tokens/s, streamed vs not, adapter merged vs not, in one process.

The adapter is a LoRA (r=16, all-linear) with seeded random weights: its answers are nonsense, but
every answer is forced to exactly --new-tokens tokens, so all variants do the same work.

    python bench/bench_generate.py [--model ID] [--new-tokens 64] [--prompts 4]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from nbfinetune.config import DEFAULT_MODEL
from nbfinetune.core.models import resolve_model
from nbfinetune.data.sources import sample_files
from nbfinetune.serving import ChatModel


def make_adapter(model_path: str, directory: str) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), lora)
    model.save_pretrained(directory)
    return directory


def streamed(chat: ChatModel, messages: list[dict], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first text chunk, seconds in all)."""
    start = time.perf_counter()
    first = None
    for chunk in chat.stream(messages, max_new_tokens=new_tokens):
        if first is None and chunk:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def whole(chat: ChatModel, messages: list[dict], new_tokens: int) -> float:
    from nbfinetune.data.render import render_prompt

    encoded = chat.tokenizer(render_prompt(chat.tokenizer, messages), return_tensors="pt",
                             add_special_tokens=False).to(chat.device)
    start = time.perf_counter()
    with torch.no_grad():
        chat.model.generate(**encoded, max_new_tokens=new_tokens, do_sample=False,
                            pad_token_id=chat.tokenizer.pad_token_id)
    return time.perf_counter() - start


def measure(chat: ChatModel, prompts: list[list[dict]], new_tokens: int) -> dict:
    model = chat.model.get_base_model() if chat.adapters else chat.model
    generation = model.generation_config
    generation.min_new_tokens = new_tokens  # the same amount of work whatever the weights say
    streamed(chat, prompts[0], 4)  # warm-up
    runs = [streamed(chat, p, new_tokens) for p in prompts]
    plain = [whole(chat, p, new_tokens) for p in prompts]
    return {"ttft_s": round(statistics.median(r[0] for r in runs), 3),
            "streamed_tokens_per_s": round(new_tokens / statistics.median(r[1] for r in runs), 1),
            "plain_tokens_per_s": round(new_tokens / statistics.median(plain), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    args = parser.parse_args()
    model_path = resolve_model(args.model)
    with open(sample_files("people")[1], encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][: args.prompts]
    prompts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]

    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(model_path, tmp)
        chat = ChatModel(model_path, adapter)
        unmerged = measure(chat, prompts, args.new_tokens)
        print("adapter unmerged:", json.dumps(unmerged), flush=True)
        chat.model = chat.model.merge_and_unload()
        chat.adapters = []
        merged = measure(chat, prompts, args.new_tokens)
        print("adapter merged:", json.dumps(merged), flush=True)
    base = ChatModel(model_path)
    no_adapter = measure(base, prompts, args.new_tokens)
    print("base model, no adapter:", json.dumps(no_adapter), flush=True)
    print(json.dumps({
        "model": args.model, "device": chat.device, "new_tokens": args.new_tokens, "prompts": args.prompts,
        "unmerged": unmerged, "merged": merged, "base": no_adapter,
        "merged_speedup": round(merged["streamed_tokens_per_s"] / unmerged["streamed_tokens_per_s"], 3),
        "streaming_cost": round(1 - unmerged["streamed_tokens_per_s"] / unmerged["plain_tokens_per_s"], 4),
    }))


if __name__ == "__main__":
    main()
