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


def chat(fake: FakeModal, call: Call, container: Container) -> Any:
    """The Chat class: @modal.enter loads the run's base model and adapter from the Volume mount, then
    the real `generate` method body streams the answer."""
    import types

    from modal._serialization import deserialize_proto_params
    from modal._utils.async_utils import synchronizer

    from nbfinetune.backends import modal_app

    runs = fake.mount(fake.named_object("volume", modal_app.RUNS_VOLUME, True, fake.volumes), container)
    run_id = deserialize_proto_params(call.options["params"])["run_id"]
    generate = synchronizer._translate_in(modal_app.Chat._get_user_cls().generate).raw_f
    with ONE_AT_A_TIME:
        model = modal_app.chat_model_for(run_id, str(runs))
        self = types.SimpleNamespace(model=model, run_id=run_id)
        return iter(list(generate(self, *call.args, **call.kwargs)))


def install(fake: FakeModal) -> None:
    fake.handlers["Trainer.*"] = trainer
    fake.handlers["Chat.*"] = chat
