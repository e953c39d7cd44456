"""Peak resident memory of LoRA training steps on CPU, to check the memory planner (nbfinetune.planner).

    python bench/measure_memory.py MODEL_DIR --batch 8 --length 256 [--checkpointing] [--steps 2]

Runs in its own process (ru_maxrss is a process high-water mark); the last stdout line is JSON with
the measured peak and the planner's estimate for the same setting.
"""

from __future__ import annotations

import argparse
import json
import resource


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import torch

    from nbfinetune.config import RunConfig
    from nbfinetune.core.batching import collate
    from nbfinetune.core.evaluate import summed_loss
    from nbfinetune.core.setup import load_for_training
    from nbfinetune.data.render import Rendered
    from nbfinetune.planner import plan_memory

    config = RunConfig.from_dict({"model": args.model, "lora": {"r": args.r},
                                  "data": {"max_seq_len": args.length},
                                  "train": {"batch_size": args.batch, "precision": "fp32",
                                            "gradient_checkpointing": args.checkpointing}})
    loaded = load_for_training(config, args.model)
    model = loaded.model
    model.train()  # gradient checkpointing is active in training mode only
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_base_model().config.vocab_size
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch, args.length), generator=generator).tolist()
        examples = [Rendered(row=i, input_ids=row, targets=row[1:] + [-100], full_length=len(row))
                    for i, row in enumerate(ids)]
        loss = summed_loss(model, collate(examples, "cpu", "padded", 0)) / (args.batch * args.length)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    estimate = plan_memory(args.model, config, device="cpu")
    print(json.dumps({"peak_rss_mb": round(peak_mb, 1), "estimate_mb": round(estimate.total / 2**20, 1),
                      "parts_mb": {k: round(v / 2**20, 1) for k, v in estimate.parts.items()}}))


if __name__ == "__main__":
    main()
