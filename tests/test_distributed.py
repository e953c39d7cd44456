"""Data-parallel training with torch.distributed on 2 CPU processes (gloo): the code path that runs on
N GPUs, checked to take the very same steps as one process."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nbfinetune.core.trainer import train

from tests.helpers import tiny_config

# The train tier: data-parallel training in two processes.
pytestmark = pytest.mark.train


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, model: str, run_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    events = []
    train(tiny_config(model, max_steps=5, batch_size=8), lambda type, **p: events.append([type, p]),
          lambda: False, run_dir)
    with open(f"{out}.{rank}", "w") as handle:
        json.dump(events, handle, default=str)


def test_two_gloo_processes_match_one_process(tiny_model, tmp_path):
    single = []
    train(tiny_config(tiny_model, max_steps=5, batch_size=8), lambda type, **p: single.append([type, p]),
          lambda: False, tmp_path / "single")
    mp.spawn(_rank_main, args=(2, _free_port(), tiny_model, str(tmp_path / "ddp"), str(tmp_path / "events")),
             nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "events.0").read_text())
    rank1 = json.loads((tmp_path / "events.1").read_text())
    assert rank1 == []  # only rank 0 speaks for the run
    started = next(p for t, p in rank0 if t == "started")
    assert started["processes"] == 2
    steps = [p for t, p in rank0 if t == "step"]
    single_steps = [p for t, p in single if t == "step"]
    torch.testing.assert_close([s["loss"] for s in steps], [s["loss"] for s in single_steps], rtol=1e-4, atol=1e-5)
    assert [s["tokens"] for s in steps] == [s["tokens"] for s in single_steps]  # the whole batch, counted once
    assert rank0[-1][0] == "finished" and (tmp_path / "ddp" / "adapter" / "adapter_config.json").is_file()


def test_local_backend_runs_two_processes_under_torchrun(home, tiny_model):
    from nbfinetune import api

    run = api.finetune(model=tiny_model, steps=4, batch_size=4, processes=2, eval_samples=2, display=False)
    summary = run.wait(timeout=180, progress=False)
    assert summary.status == "finished", (run.path / "worker.log").read_text()[-3000:]
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert next(e for e in events if e.type == "started")["processes"] == 2
    assert [e["step"] for e in events if e.type == "step"] == [1, 2, 3, 4]
