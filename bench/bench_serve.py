"""Load test of the OpenAI-compatible server on loopback: 1, 8 and 32 concurrent streaming clients, each
for a fixed duration, against one-request-at-a-time `generate` (the in-notebook chat) as the baseline.

The server runs in a child process (so the clients do not share its interpreter) and serves the base
model plus two LoRA adapters (r=16, seeded random weights); clients cycle through the three model names,
so every batch mixes adapters. Every answer is forced to exactly --new-tokens tokens (min_new_tokens),
so server and baseline do the same work per request.

    python bench/bench_serve.py [--model ID] [--new-tokens 32] [--duration 20] [--clients 1,8,32]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prompts(count: int) -> list[list[dict]]:
    from nbfinetune.data.sources import sample_files

    with open(sample_files("people")[1], encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:count]
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]


def fixed_length(model, new_tokens: int) -> None:
    configs = [model.generation_config]
    if hasattr(model, "get_base_model"):
        configs.append(model.get_base_model().generation_config)
    for config in configs:
        config.min_new_tokens = new_tokens


def make_adapter(model_path: str, directory: str, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), lora)
    model.save_pretrained(directory)
    return directory


# --- the server (child process) ------------------------------------------------------------------
def serve(model_path: str, adapters: list[str], new_tokens: int) -> None:
    from nbfinetune.serve.local import BaseSpec, serve_models

    spec = BaseSpec("base", model_path,
                    [([f"adapter-{i}"], path, "bench") for i, path in enumerate(adapters)])
    server = serve_models([spec], quiet=True)
    for engine in server._engines:
        engine.min_new_tokens = new_tokens
    print(json.dumps({"base_url": server.base_url, "api_key": server.api_key, "models": server.models}),
          flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()


# --- the clients -----------------------------------------------------------------------------------
async def load(base_url: str, key: str, models: list[str], messages: list[list[dict]], clients: int,
               duration: float, new_tokens: int) -> dict:
    import httpx

    ttfts: list[float] = []
    tokens = requests = errors = 0
    deadline = time.perf_counter() + duration

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens, requests, errors
        turn = index
        while turn == index or time.perf_counter() < deadline:  # at least one request each
            body = {"model": models[turn % len(models)], "messages": messages[turn % len(messages)],
                    "max_tokens": new_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            turn += 1
            start = time.perf_counter()
            first = None
            try:
                async with http.stream("POST", f"{base_url}/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        errors += 1
                        continue
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            errors += 1
                        elif (first is None and event["choices"]
                              and event["choices"][0]["delta"].get("content")):
                            first = time.perf_counter() - start
                        if event.get("usage"):
                            tokens += event["usage"]["completion_tokens"]
            except httpx.HTTPError:
                errors += 1
                continue
            requests += 1
            ttfts.append(first if first is not None else time.perf_counter() - start)

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return summary(requests, tokens, errors, ttfts, elapsed) | {"clients": clients}


def summary(requests: int, tokens: int, errors: int, ttfts: list[float], elapsed: float) -> dict:
    ordered = sorted(ttfts) or [0.0]
    return {"requests": requests, "requests_per_s": round(requests / elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 1), "ttft_p50_s": round(statistics.median(ordered), 3),
            "ttft_p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
            "errors": errors, "seconds": round(elapsed, 1)}


def baseline(model_path: str, adapter: str, messages: list[list[dict]], duration: float,
             new_tokens: int) -> dict:
    """One request at a time through the in-notebook chat (serving.ChatModel.stream)."""
    from nbfinetune.serving import ChatModel

    chat = ChatModel(model_path, adapter)
    fixed_length(chat.model, new_tokens)
    list(chat.stream(messages[0], max_new_tokens=4))  # warm-up
    ttfts, tokens, requests = [], 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        start = time.perf_counter()
        first = None
        for chunk in chat.stream(messages[requests % len(messages)], max_new_tokens=new_tokens):
            if first is None and chunk:
                first = time.perf_counter() - start
        tokens += new_tokens  # min_new_tokens = max_new_tokens: exactly this many
        requests += 1
        ttfts.append(first or time.perf_counter() - start)
    return summary(requests, tokens, 0, ttfts, time.perf_counter() - started)


def main() -> None:
    from nbfinetune.config import DEFAULT_MODEL
    from nbfinetune.core.models import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds per level (and for the baseline)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--serve", nargs="*", help=argparse.SUPPRESS)  # child mode: model path, adapters
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1:], args.new_tokens)

    import torch

    model_path = resolve_model(args.model)
    messages = prompts(8)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = [make_adapter(model_path, f"{tmp}/a{i}", seed=i) for i in range(2)]
        path = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        child = subprocess.Popen([sys.executable, __file__, "--new-tokens", str(args.new_tokens), "--serve",
                                  model_path, *adapters], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=os.environ | {"PYTHONPATH": path})
        try:
            info = json.loads(child.stdout.readline())
            # Warm-up.
            asyncio.run(load(info["base_url"], info["api_key"], info["models"], messages, 1, 0.0, 4))
            levels = {}
            for clients in (int(c) for c in args.clients.split(",")):
                result = asyncio.run(load(info["base_url"], info["api_key"], info["models"], messages,
                                          clients, args.duration, args.new_tokens))
                levels[str(clients)] = result
                print(f"server, {clients} clients:", json.dumps(result), flush=True)
        finally:
            child.stdin.close()
            child.wait(timeout=60)
        base = baseline(model_path, adapters[0], messages, args.duration, args.new_tokens)
        print("baseline, one request at a time:", json.dumps(base), flush=True)
    print(json.dumps({
        "model": args.model, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "new_tokens": args.new_tokens, "duration_s": args.duration, "cpu_threads": torch.get_num_threads(),
        "baseline": base, "server": levels,
        "speedup": {c: round(r["tokens_per_s"] / base["tokens_per_s"], 2) for c, r in levels.items()},
        "errors": sum(r["errors"] for r in levels.values()),
    }))


if __name__ == "__main__":
    main()
