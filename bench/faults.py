"""Fault injection on the local backend: a careful user's worst day, bounded to a few minutes.

- kills: SIGKILL of the trainer, the supervisor or the whole process group, at model load, mid-step,
  right as an evaluation starts and right as a checkpoint save starts; then resume to `finished`;
- disk: a full disk (simulated ENOSPC) while saving a checkpoint, a torn events line left by a full disk,
  an empty config.json left by a launch on a full disk;
- corruption: torn, truncated, garbled, binary and wrongly-typed lines in a finished run's events.jsonl;
- data: `nbfinetune validate --json` on malformed files (deep nesting, huge integers, BOM, latin-1, broken
  CSVs, random bytes) and on seeded random damage to real rows: exit code 0/1/2, JSON, no traceback.

For every fault it checks: the run ended with a reason or is resumable (and a resume reaches `finished`),
no event written before the fault is lost, `seq` stays dense, and nothing raised (a traceback) in the
store, the listings or the REST paging. Tiny model, this machine only, no network.

    python bench/faults.py [--quick] [--model DIR] [--parallel 3] [--mutated 200]

Details go to stderr; the last stdout line is one JSON object:
{"faults_injected", "runs_recoverable", "runs_unrecoverable", "events_lost", "tracebacks", "seconds"}.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PHASES = ("load", "step", "eval", "checkpoint")
TARGETS = ("trainer", "supervisor", "group")
EVERY = 3  # evaluation and checkpoint every 3 steps: the kill comes right after step 3's event


@dataclass
class Outcome:
    fault: str
    recoverable: bool = True
    events_lost: int = 0
    tracebacks: list[str] = field(default_factory=list)
    note: str = ""


def _guarded(outcome: Outcome, action, *args, **kwargs):
    """Run one user-facing action; an exception is a traceback the user would have seen."""
    try:
        return action(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 — counting them is the point
        outcome.tracebacks.append(f"{outcome.fault}: {type(exc).__name__}: {exc}"[:300])
        return None


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _lost(before: list, after: list) -> int:
    kept = {(e.seq, e.type) for e in after}
    return sum((e.seq, e.type) not in kept for e in before)


def _dense(events: list) -> bool:
    return [e.seq for e in events] == list(range(1, len(events) + 1))


def kill_fault(model: str, phase: str, target: str) -> Outcome:
    from nbfinetune import api
    from nbfinetune.ownership import our_pid

    outcome = Outcome(f"kill {target} at {phase}")
    run = api.finetune(model=model, steps=6, eval_every=EVERY, save_every=EVERY, eval_samples=2,
                       display=False)
    try:
        def reached() -> bool:
            events = run.events()
            if phase == "load":
                return bool(events) and (run.path / "train.pid").exists()
            if phase == "step":
                return any(e.type == "step" and e["step"] >= 2 for e in events)
            return any(e.type == "step" and e["step"] == EVERY for e in events)  # eval / save begins now

        if not _wait(reached, 120):
            outcome.recoverable, outcome.note = False, "phase never reached"
            return outcome
        before = run.events()
        pid_file = run.path / ("train.pid" if target == "trainer" else "worker.pid")
        pid = our_pid(pid_file)
        if pid is None:
            outcome.note = "process already gone"
        elif target == "group":
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        if not _wait(lambda: run.backend.is_alive(run.id, run.store) is False, 30):
            outcome.recoverable, outcome.note = False, "a process outlived the kill"
            return outcome
        status = _guarded(outcome, lambda: run.status)
        after = run.events()
        outcome.events_lost = _lost(before, after)
        if not _dense(after):
            outcome.recoverable, outcome.note = False, "seq not dense"
            return outcome
        if status == "finished":  # the kill came too late to matter
            outcome.note = "finished before the kill"
            return outcome
        if status not in ("failed", "cancelled", "lost"):
            outcome.recoverable, outcome.note = False, f"status {status} after the kill"
            return outcome
        _guarded(outcome, run.resume)
        final = _guarded(outcome, run.wait, timeout=240, progress=False)
        events = run.events()
        outcome.events_lost += _lost(after, events)
        outcome.recoverable = bool(final is not None and final.status == "finished" and _dense(events)
                                   and final.error is None)
        outcome.note = f"{status} → {getattr(final, 'status', None)}"
    finally:
        try:
            os.killpg(int((run.path / "worker.pid").read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    return outcome


def disk_faults(model: str, home: Path) -> list[Outcome]:
    import torch

    from nbfinetune.config import RunConfig
    from nbfinetune.core.checkpoints import latest_checkpoint
    from nbfinetune.core.trainer import train
    from nbfinetune.runs import EventWriter, RunStore, read_events

    outcomes = []
    # 1. The disk fills while a checkpoint is written (torch reports a short write, or ENOSPC).
    for error in (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7232 vs 7124"),
                  OSError(errno.ENOSPC, "No space left on device")):
        outcome = Outcome(f"ENOSPC during a checkpoint ({type(error).__name__})")
        run_dir = Path(tempfile.mkdtemp(dir=home))
        config = RunConfig.from_dict({"model": model,
                                      "train": {"max_steps": 6, "save_every": 2, "batch_size": 8},
                                      "eval": {"samples": 0}})
        real_save = torch.save

        def full(obj, path, *args, _error=error, _real_save=real_save, **kwargs):
            if "step-4" in str(path):
                Path(path).write_bytes(b"PK" * 64)
                raise _error
            return _real_save(obj, path, *args, **kwargs)

        torch.save = full
        try:
            train(config, lambda *a, **k: None, lambda: False, run_dir)
            outcome.recoverable, outcome.note = False, "no error on a full disk"
        except OSError as exc:
            if "no space left on device" not in str(exc):
                outcome.tracebacks.append(f"{outcome.fault}: unclear message {exc}")
        except Exception as exc:  # noqa: BLE001
            outcome.tracebacks.append(f"{outcome.fault}: {type(exc).__name__}: {exc}"[:300])
        finally:
            torch.save = real_save
        if latest_checkpoint(run_dir) is None or latest_checkpoint(run_dir).name != "step-2":
            outcome.recoverable, outcome.note = False, "a partial checkpoint is the latest"
        else:
            steps: list[int | None] = []

            def record(kind, *, _steps=steps, **payload):
                if kind == "step":
                    _steps.append(payload.get("step"))

            _guarded(outcome, train, config, record, lambda: False, run_dir)
            outcome.recoverable = steps == [3, 4, 5, 6]
        outcomes.append(outcome)

    store = RunStore(home / "disk")
    # 2. A full disk tore the last events line; space came back; the next writer goes on.
    outcome = Outcome("torn events line after a full disk")
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    for step in range(1, 4):
        writer.emit("step", step=step, epoch=0, loss=1.0, lr=0.1)
    writer.close()
    before = read_events(store.events_path(run_id)).events
    with open(store.events_path(run_id), "a") as handle:
        handle.write(f'{{"v":1,"type":"step","run_id":"{run_id}","seq":4,"ti')
    writer = _guarded(outcome, EventWriter, store.events_path(run_id), run_id)
    if writer is not None:
        writer.emit("failed", error="X", message="after the disk filled")
        writer.close()
    after = read_events(store.events_path(run_id)).events
    outcome.events_lost = _lost(before, after)
    outcome.recoverable = bool(after) and after[-1].type == "failed" and _dense(after)
    outcomes.append(outcome)
    # 3. A launch on a full disk left an empty config.json: that run is `damaged`, the others list.
    outcome = Outcome("empty config.json from a launch on a full disk")
    broken = store.create(RunConfig())
    (store.path(broken) / "config.json").write_text("")
    listing = _guarded(outcome, store.list) or []
    outcome.recoverable = (any(s.run_id == broken and s.status == "damaged" for s in listing)
                           and len(listing) == 2)
    outcomes.append(outcome)
    return outcomes


CORRUPTIONS = {
    "torn last line": lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]],
    "truncated mid-file": lambda lines: lines[:3] + [lines[3][:10]] + lines[4:],
    "garbage line": lambda lines: lines[:2] + ["{not json"] + lines[2:],
    "binary junk": lambda lines: lines[:2] + ["\x00\x01\xff\xfe"] + lines[2:],
    "seq as text": lambda lines: lines + [lines[-1].replace('"seq":', '"seq":"abc","x":', 1)],
    "seq as list": lambda lines: lines + [lines[-1].replace('"seq":', '"seq":[1],"x":', 1)],
    "time null": lambda lines: lines + [lines[-1].replace('"time":', '"time":null,"x":', 1)],
    "loss as text NaN": lambda lines: lines + [lines[-1].replace('"loss":', '"loss":"NaN","x":', 1)],
    "not an object": lambda lines: lines[:1] + ["[1, 2, 3]", "7", "null"] + lines[1:],
    "empty file": lambda lines: [],
}


def corruption_faults(home: Path) -> list[Outcome]:
    from nbfinetune import api
    from nbfinetune.config import RunConfig
    from nbfinetune.runs import EventWriter, RunStore, page_events, read_events

    store = RunStore(home / "corrupt")
    outcomes = []
    for name, corrupt in CORRUPTIONS.items():
        outcome = Outcome(f"events.jsonl: {name}")
        run_id = store.create(RunConfig())
        writer = EventWriter(store.events_path(run_id), run_id)
        writer.emit("started", model="m", device="cpu", total_steps=9)
        for step in range(1, 9):
            writer.emit("step", step=step, epoch=0, loss=1.0 / step, lr=0.1)
        writer.close()
        path = store.events_path(run_id)
        lines = path.read_text().splitlines()
        damaged = corrupt(list(lines))
        path.write_bytes("".join(line + "\n" for line in damaged).encode("utf-8", "surrogateescape"))
        intact = {line for line in lines if line in damaged}
        result = _guarded(outcome, read_events, path)
        if result is not None:
            outcome.events_lost = len(intact - {e.to_json() for e in result.events})
        # Each check runs at once: the loop variables are bound as defaults only to say so.
        _guarded(outcome, lambda run_id=run_id: repr(api.attach(run_id, display=False, store=store)))
        summary = _guarded(outcome, store.summary, run_id)
        _guarded(outcome, page_events, path, 0, 5)
        _guarded(outcome,
                 lambda summary=summary: json.dumps(summary.to_dict(), allow_nan=False) if summary else None)
        writer = _guarded(outcome, EventWriter, path, run_id)  # a resume's writer continues the stream
        if writer is not None:
            writer.emit("log", level="info", message="resumed")
            writer.close()
            last_is_log = _guarded(outcome, lambda path=path: read_events(path).events[-1].type == "log")
            outcome.recoverable = last_is_log or False
        outcomes.append(outcome)
    listing = Outcome("listing with every corruption at once")
    listing.recoverable = len(_guarded(listing, store.list) or []) == len(CORRUPTIONS)
    return outcomes + [listing]


def data_faults(home: Path, mutated: int) -> list[Outcome]:
    """The validator on malformed files: the known kinds and seeded random damage to real rows. Each must
    end with exit code 0, 1 or 2 and JSON output, never a traceback (the real CLI, in this process)."""
    import contextlib
    import io

    from nbfinetune import fuzzdata
    from nbfinetune.cli import main as cli
    from nbfinetune.data import sample_files

    folder = home / "malformed"
    folder.mkdir()
    known = fuzzdata.malformed_files(folder)
    rows = Path(sample_files("people")[0]).read_text(encoding="utf-8").splitlines()
    cases = [(name, path, code) for name, (path, code) in known.items()]
    cases += [(p.name, p, None) for p in fuzzdata.mutations(rows, folder, mutated)]
    outcomes = []
    for name, path, expected in cases:
        outcome = Outcome(f"data {name}")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _guarded(outcome, cli, ["validate", str(path), "--model", "none", "--json"])
        if "Traceback" in out.getvalue() + err.getvalue():
            outcome.tracebacks.append(f"{name}: a traceback was printed")
        elif code is not None:
            try:
                json.loads(out.getvalue())
            except ValueError:
                outcome.tracebacks.append(f"{name}: --json output is not JSON")
            if code not in (0, 1, 2) or (expected is not None and code != expected):
                outcome.tracebacks.append(f"{name}: exit code {code}, expected {expected or '0/1/2'}")
        outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one kill (trainer mid-step) instead of all 12")
    parser.add_argument("--model", help="a model directory (default: a tiny model built here)")
    parser.add_argument("--parallel", type=int, default=3, help="kill scenarios run side by side")
    parser.add_argument("--mutated", type=int, default=200, help="randomly damaged data files to validate")
    args = parser.parse_args(argv)
    start = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="nbft-faults-"))
    os.environ["NBFINETUNE_HOME"] = str(home / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = args.model
        if model is None:
            from nbfinetune.testing import make_tiny_model

            model = str(make_tiny_model(home / "tiny"))
        kills = [("step", "trainer")] if args.quick else [(p, t) for p in PHASES for t in TARGETS]
        with ThreadPoolExecutor(args.parallel) as pool:
            outcomes = list(pool.map(lambda pt: _safe(kill_fault, model, *pt), kills))
        outcomes += disk_faults(model, home) + corruption_faults(home)
        outcomes += data_faults(home, 20 if args.quick else args.mutated)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for outcome in outcomes:
        mark = "ok " if outcome.recoverable and not outcome.events_lost and not outcome.tracebacks else "BAD"
        print(f"{mark} {outcome.fault}: lost {outcome.events_lost} {outcome.note} "
              f"{'; '.join(outcome.tracebacks)}", file=sys.stderr)
    report = {"faults_injected": len(outcomes), "runs_recoverable": sum(o.recoverable for o in outcomes),
              "runs_unrecoverable": sum(not o.recoverable for o in outcomes),
              "events_lost": sum(o.events_lost for o in outcomes),
              "tracebacks": sum(len(o.tracebacks) for o in outcomes),
              "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps(report))
    return 0 if report["runs_unrecoverable"] == report["events_lost"] == report["tracebacks"] == 0 else 1


def _safe(function, *args) -> Outcome:
    try:
        return function(*args)
    except Exception:  # noqa: BLE001 — a harness bug or an uncaught failure: counted, never hidden
        outcome = Outcome(f"{function.__name__}{args[1:]}", recoverable=False)
        outcome.tracebacks.append(traceback.format_exc(limit=3)[-300:])
        return outcome


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
