"""Offline proof of DPO and GRPO on the demo model (SmolLM2-135M-Instruct), in CPU minutes.

    python bench/bench_preference.py dpo  [--steps 30] [--lr 5e-4] [--samples 24]
    python bench/bench_preference.py grpo [--steps 20] [--lr 5e-4] [--samples 24]

DPO trains on the people sample turned into preference rows (chosen = the right JSON, rejected = a corrupted
answer; data.preference.people_preferences); GRPO on its prompts with the reward
nbfinetune.rewards:people_json.
Both report json_match of greedy answers on the 24 eval prompts, base vs trained. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nbfinetune.config import DEFAULT_MODEL, RunConfig
from nbfinetune.core.trainer import train
from nbfinetune.data.preference import people_preferences


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=("dpo", "grpo"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--generations", type=int, default=4)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nbft-pref-"))
    train_rows, eval_rows = people_preferences("train"), people_preferences("eval")
    settings: dict = {"method": args.method, "max_steps": args.steps, "lr": args.lr,
                      "batch_size": args.batch_size}
    if args.method == "grpo":
        train_rows = [{"prompt": r["prompt"], "answer": r["chosen"]} for r in train_rows]
        eval_rows = [{"prompt": r["prompt"], "answer": r["chosen"]} for r in eval_rows]
        settings |= {"rewards": ["nbfinetune.rewards:people_json"], "grpo_generations": args.generations,
                     "grpo_max_new_tokens": 40}
    config = RunConfig.from_dict({
        "model": DEFAULT_MODEL, "lora": {"r": 16},
        "train": settings,
        "data": {"path": write(folder / "train.jsonl", train_rows),
                 "eval_path": write(folder / "eval.jsonl", eval_rows)},
        "eval": {"every": args.eval_every, "samples": args.samples, "max_new_tokens": 32,
                 "metrics": ["json_match"]}})
    log = []

    def emit(type: str, **payload) -> None:
        log.append((type, payload))
        if type in ("step", "eval"):
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in payload.items()
                     if k not in ("samples", "completions", "base_metrics")}
            print(type, json.dumps(shown), flush=True)

    start = time.time()
    result = train(config, emit, lambda: False, folder / "run")
    steps = [p for t, p in log if t == "step"]
    evals = [p for t, p in log if t == "eval"]
    keys = ("loss", "reward_margin", "reward_accuracy", "reward", "kl", "completion_length")

    def window(part: list[dict]) -> dict:
        return {k: round(sum(s[k] for s in part) / len(part), 4) for k in keys if k in part[0]}

    print(json.dumps({"method": args.method, "steps": args.steps, "lr": args.lr,
                      "seconds": round(time.time() - start),
                      "first_steps": window(steps[:5]), "last_steps": window(steps[-5:]),
                      "evals": [{k: e.get(k) for k in ("step", "eval_loss", "eval_reward_margin",
                                                       "eval_reward_accuracy", "metrics")} for e in evals],
                      "base_json_match": result["base_metrics"].get("json_match"),
                      "json_match": result["metrics"].get("json_match")}))


if __name__ == "__main__":
    main()
