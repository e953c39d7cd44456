"""Validation throughput and memory on a 200k-row JSONL file (1% bad rows), with the demo tokenizer.

    python bench/bench_validate.py [--rows 200000] [--model ID]

Reports rows/s and peak resident memory (the process high-water mark, before and after validating).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from make_sample_data import make_rows  # noqa: E402

from nbfinetune.config import DEFAULT_MODEL  # noqa: E402
from nbfinetune.core.models import resolve_model  # noqa: E402
from nbfinetune.core.setup import load_tokenizer  # noqa: E402
from nbfinetune.data.validate import validate  # noqa: E402


def write_file(path: Path, rows: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    template = make_rows(1000, rng)
    bad = 0
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            if rng.random() < 0.01:
                handle.write(rng.choice(['{"messages": [', '{"messages": []}', '{"text": 3}']) + "\n")
                bad += 1
            else:
                handle.write(json.dumps(template[index % len(template)]) + "\n")
    return bad


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    tokenizer = load_tokenizer(resolve_model(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        bad = write_file(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        before = peak_rss_mb()
        start = time.perf_counter()
        result = validate(str(path), tokenizer=tokenizer, max_seq_len=512)
        seconds = time.perf_counter() - start
        after = peak_rss_mb()
    report = result.report
    assert report.rows == args.rows and report.problem_count == bad, (report.rows, report.problem_count, bad)
    print(json.dumps({"rows": args.rows, "file_mb": round(size_mb, 1), "bad_rows": bad,
                      "seconds": round(seconds, 1),
                      "rows_per_s": round(args.rows / seconds), "peak_rss_mb_before": round(before),
                      "peak_rss_mb_after": round(after), "tokens_total": report.tokens.get("total")}))


if __name__ == "__main__":
    main()
