"""Container bodies for the fake: what Modal would run in a container, here in a thread of the test with
its own modal client (its own token, so the fake knows whose Volume commit it is)."""

from __future__ import annotations

import json
import threading
from typing import Any

from .server import Call, Container, FakeModal

# Real containers are separate processes; threads of one process must not load models at the same time
# (transformers' meta-device loading is process-global).
ONE_AT_A_TIME = threading.Lock()


def trainer(fake: FakeModal, call: Call, container: Container) -> Any:
    import modal

    from nbfinetune.backends import modal_app

    client = modal.Client.from_credentials(container.token, "as-container")
    runs = fake.mount(fake.named_object("volume", modal_app.RUNS_VOLUME, True, fake.volumes), container)
    config, run_id = call.args
    config = json.loads(json.dumps(config).replace(f'"{modal_app.RUNS_ROOT}/', f'"{runs}/'))  # the mount point
    with ONE_AT_A_TIME:
        if not container.alive:
            return None
        return modal_app.container_train(config, run_id, runs_root=str(runs), client=client, require_cuda=False)


def install(fake: FakeModal) -> None:
    fake.handlers["Trainer.*"] = trainer
