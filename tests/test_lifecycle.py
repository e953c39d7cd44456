"""Run lifecycle without training: resume rules, status after a resume, process identity.

Run directories are written here as a worker would leave them; no subprocess trains."""

import os
import subprocess
import sys

import pytest

from nbfinetune import api
from nbfinetune.backends.local import LocalBackend
from nbfinetune.config import RunConfig
from nbfinetune.ownership import LOCK_FILE, our_pid, start_time
from nbfinetune.runs import EventWriter, RunStore

STARTED = {"model": "m", "device": "cpu", "total_steps": 3}


def make_run(store: RunStore, *events: tuple[str, dict]) -> str:
    run_id = store.create(RunConfig())
    writer = EventWriter(store.events_path(run_id), run_id)
    for kind, payload in events:
        writer.emit(kind, **payload)
    writer.close()
    return run_id


@pytest.fixture
def stranger():
    """An unrelated process, standing for whatever now owns a recycled pid."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def test_a_finished_run_is_not_resumed_and_bare_resume_picks_a_resumable_one(home):
    store = RunStore()
    cancelled = make_run(store, ("started", STARTED), ("cancelled", {"step": 1}))
    finished = make_run(store, ("started", STARTED), ("finished", {"adapter_path": "/x/adapter"}))
    with pytest.raises(RuntimeError, match="has finished.*launch a new run with more steps.*/x/adapter"):
        api.attach(finished, display=False).resume()
    assert api.latest_resumable(store) == cancelled  # the newer, finished run is never picked
    only_finished = RunStore(home / "other")
    make_run(only_finished, ("started", STARTED), ("finished", {"adapter_path": "/x"}))
    with pytest.raises(LookupError, match="no cancelled, failed or lost run to resume"):
        api.latest_resumable(only_finished)


def test_bare_resume_magic_refuses_when_only_finished_runs_exist(home, ip):
    from IPython.core.error import UsageError

    make_run(RunStore(), ("started", STARTED), ("finished", {"adapter_path": "/x"}))
    with pytest.raises(UsageError, match="no cancelled, failed or lost run"):
        ip.run_line_magic("finetune", "resume")


def test_a_killed_run_resumed_to_finished_no_longer_reports_the_old_error(home):
    store = RunStore()
    run_id = make_run(store, ("started", STARTED), ("failed", {"error": "Killed(SIGKILL)", "message": "oom"}),
                      ("started", STARTED), ("finished", {"adapter_path": "/a"}))
    summary = store.summary(run_id)
    assert summary.status == "finished" and summary.error is None


def test_a_recycled_pid_is_never_taken_for_the_worker(home, stranger):
    """Pid files of a dead run now point at an unrelated process: it is not `running`, and cancel
    (graceful or hard) leaves that process alone."""
    store = RunStore()
    legacy = make_run(store, ("started", STARTED))  # an earlier version's run: bare pid files, no lock
    locked = make_run(store, ("started", STARTED))  # this version's run: a lock file nobody holds
    (store.path(locked) / LOCK_FILE).touch()
    for run_id in (legacy, locked):
        for name in ("worker.pid", "train.pid"):
            (store.path(run_id) / name).write_text(str(stranger.pid))
        assert store.summary(run_id).status == "lost"
        backend = LocalBackend()
        assert backend.is_alive(run_id, store) is False
        backend.cancel(run_id, store)
        backend.cancel(run_id, store, hard=True)
    # A pid file recording another start time is not that process either.
    (store.path(locked) / "worker.pid").write_text(f"{stranger.pid} {start_time(stranger.pid) - 1}")
    assert our_pid(store.path(locked) / "worker.pid") is None
    assert stranger.poll() is None, "the unrelated process was signalled"
    os.kill(stranger.pid, 0)
