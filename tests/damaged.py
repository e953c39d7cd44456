"""Damaged run directories as a full disk, a crash or a hand edit leave them (tests and the fault check)."""

from __future__ import annotations

import json

from nbfinetune.config import RunConfig
from nbfinetune.runs import EventWriter, RunStore

STARTED = {"model": "m", "device": "cpu", "total_steps": 3}
# run label → (config.json text or None to keep the real one, extra raw event lines)
DAMAGE = {
    "empty-config": ("", []),
    "not-json-config": ("{oops", []),
    "list-config": ("[1, 2]", []),
    "seq-text": (None, ['{"v":1,"type":"step","run_id":"x","seq":"abc","time":1,"step":1,"epoch":0,"loss":1,"lr":1}']),
    "seq-list": (None, ['{"v":1,"type":"step","run_id":"x","seq":[1],"time":1,"step":1,"epoch":0,"loss":1,"lr":1}']),
    "time-null": (None, ['{"v":1,"type":"step","run_id":"x","seq":9,"time":null,"step":1,"epoch":0,"loss":1,"lr":1}']),
    "loss-nan-text": (None, ['{"v":1,"type":"step","run_id":"x","seq":2,"time":1,"step":1,"epoch":0,"loss":"NaN","lr":1}']),
    "loss-nan": (None, ['{"v":1,"type":"step","run_id":"x","seq":2,"time":1,"step":1,"epoch":0,"loss":NaN,"lr":1}']),
}


def make_damaged_runs(store: RunStore) -> dict[str, str]:
    """One run per kind of damage, plus a healthy one; returns label → run id."""
    made = {}
    for label, (config_text, lines) in {**DAMAGE, "healthy": (None, [])}.items():
        run_id = store.create(RunConfig(name=label))
        writer = EventWriter(store.events_path(run_id), run_id)
        writer.emit("started", **STARTED)
        writer.close()
        with open(store.events_path(run_id), "a", encoding="utf-8") as handle:
            handle.write("".join(line.replace('"x"', json.dumps(run_id)) + "\n" for line in lines))
        if config_text is not None:
            (store.path(run_id) / "config.json").write_text(config_text, encoding="utf-8")
        made[label] = run_id
    return made
