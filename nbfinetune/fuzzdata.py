"""Malformed data files, for the validator's tests and the fault-injection check (`make faults`).

Each kind is one a user really produced or a fuzzer found: nesting deep enough to overflow a recursive
parser, integers past Python's digit limit, byte-order marks, latin-1 bytes, CSVs that are empty, random or
unbalanced, lone surrogates, rows with thousands of turns. `mutations` adds seeded random damage to real rows.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

GOOD_LINE = json.dumps({"prompt": "hi", "completion": "there"})


def malformed_files(folder: Path) -> dict[str, tuple[Path, int]]:
    """name -> (file, the exit code `nbfinetune validate --json --model none` must give for it)."""
    out: dict[str, tuple[Path, int]] = {}

    def put(name: str, data: bytes, code: int) -> None:
        (folder / name).write_bytes(data)
        out[name] = (folder / name, code)

    put("deep.jsonl", ("[" * 1500 + "]" * 1500 + "\n" + GOOD_LINE + "\n").encode(), 0)
    put("deep-object.jsonl", ('{"a":' * 3000 + "1" + "}" * 3000 + "\n" + GOOD_LINE + "\n").encode(), 0)
    put("bigint.jsonl", (GOOD_LINE + "\n" + '{"prompt": "x", "completion": ' + "9" * 5000 + "}\n" + GOOD_LINE
                         + "\n").encode(), 0)
    put("bom.jsonl", ("\ufeff" + GOOD_LINE + "\n").encode("utf-8"), 0)
    put("late.jsonl", ("{oops\n" * 250 + GOOD_LINE + "\n").encode(), 0)
    latin1 = GOOD_LINE + "\n" + '{"prompt": "caf\xe9", "completion": "ok"}\n'
    put("latin1.jsonl", latin1.encode("latin-1"), 0)
    put("empty.csv", b"", 2)
    put("random.csv", os.urandom(3000), 2)
    put("quote.csv", b'prompt,completion\nhi,there\n"unbalanced,ok\nyo,fine\n', 0)
    put("extra.csv", b"prompt,completion\nhi,there\nyo,ok,extra\n", 0)
    put("latin1.csv", "prompt,completion\nhi,there\ncaf\xe9,ok\n".encode("latin-1"), 0)
    put("bom.csv", "\ufeffprompt,completion\nhi,there\n".encode("utf-8"), 0)
    put("random.parquet", os.urandom(500), 2)
    put("random.json", os.urandom(500), 2)
    put("deep.json", ("[" * 5000 + "]" * 5000).encode(), 2)
    return out


def mutations(rows: list[str], folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JSONL files, each real rows with random damage: cut lines, flipped bytes, swapped types,
    dropped keys, surrogates, huge turn lists. No expected code: any of 0/1/2 is right, a traceback never."""
    rng = random.Random(seed)
    damage = [
        lambda line: line[: rng.randrange(len(line))],
        lambda line: line.replace(rng.choice(line), chr(rng.randrange(1, 0x2FF)), 1),
        lambda line: line.replace('"content": "', '"content": ', 1),
        lambda line: line.replace('"role"', '"rol"', 1),
        lambda line: line.replace('"content": "', '"content": "\\ud800', 1),
        lambda line: _many_turns(line, rng.randrange(50, 2000)),
        lambda line: json.dumps({"messages": [{"role": "user", "content": {"nested": [1, [2, [3]]]}}]}),
        lambda line: "[" + line + "]",
        lambda line: json.dumps(rng.choice([None, 7, "text", [], {}])),
    ]
    files = []
    for index in range(count):
        lines = rng.sample(rows, min(len(rows), 20))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(lines))
            lines[at] = rng.choice(damage)(lines[at])
        path = folder / f"mutated-{index}.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
        files.append(path)
    return files


def _many_turns(line: str, times: int) -> str:
    """The row's conversation repeated `times` times (a row an earlier damage left unreadable stays as it
    is)."""
    try:
        return json.dumps({"messages": json.loads(line)["messages"] * times})
    except (ValueError, TypeError, KeyError):
        return line
