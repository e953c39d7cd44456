"""The Modal app: image, Volumes, Queue, the GPU training class and the chat serving class.

Importable without torch and without Modal credentials (everything here is lazy in Modal); the heavy
imports happen inside the methods, in the container. Deploy once with `nbfinetune deploy`.
Written against modal 1.6 (see ../shared/MODAL.md). Modal refuses to start a container whose app
definition differs from the deployed one, so nothing here may depend on the local environment except
through the image's own environment (which the container has too): see HF_SECRET.
"""

# No `from __future__ import annotations`: modal.parameter() reads real type annotations.

import os
from pathlib import PurePosixPath
from typing import Any

import modal

from .._version import __version__

APP_NAME = "nbfinetune"
RUNS_VOLUME = "nbfinetune-runs"
# Model weights: cached apart from the runs, never committed with them.
HF_CACHE_VOLUME = "nbfinetune-hf-cache"
EVENTS_QUEUE = "nbfinetune-events"
CANCEL_DICT = "nbfinetune-cancel"
META_DICT = "nbfinetune-meta"  # {"version": the package version last deployed}
RUNS_ROOT = "/runs"
HF_CACHE_ROOT = "/hf-cache"
DEFAULT_GPU = "A10"
TIMEOUT_S = 24 * 3600
TRAINER_CPU = 8.0  # Modal's default is a fraction of a core: tokenisation and data loading starve
TRAINER_MEMORY_MIB = 32768
HF_SECRET_ENV = "NBFINETUNE_MODAL_HF_SECRET"
# The name of a Modal secret holding HF_TOKEN (gated models), chosen at deploy time. It is written into
# the image's environment, so the container evaluates this line to the same value as the deploying kernel.
HF_SECRET = os.environ.get(HF_SECRET_ENV, "")
PACKAGES = ["torch==2.13.0", "transformers==5.24.0", "peft==0.21.2", "datasets==5.2.0", "safetensors==0.8.0",
            "huggingface_hub==2.4.0", "pyyaml", "tqdm", "bitsandbytes==0.50.2",
            "cloudpickle==3.1.3"]  # GRPO rewards sent by value (train.reward_code)

IMAGE_ENV = {"HF_HOME": HF_CACHE_ROOT, "TOKENIZERS_PARALLELISM": "false", HF_SECRET_ENV: HF_SECRET,
             "NBFINETUNE_VERSION": __version__}

image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(*PACKAGES)
    .env(IMAGE_ENV)
    # Our own source, data files included (samples, prices); not the built JupyterLab extension.
    .add_local_python_source("nbfinetune", ignore=["**/__pycache__", "**/*.pyc", "**/labextension/**"])
)
app = modal.App(APP_NAME, image=image, tags={"nbfinetune_version": __version__})
volume = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)
hf_cache = modal.Volume.from_name(HF_CACHE_VOLUME, create_if_missing=True)
SECRETS = [modal.Secret.from_name(HF_SECRET, required_keys=["HF_TOKEN"])] if HF_SECRET else []
# Annotated as modal's parameter is: dict is invariant, so an inferred dict[str, Volume] is refused.
VOLUMES: dict[str | PurePosixPath, modal.Volume | modal.CloudBucketMount] = {RUNS_ROOT: volume,
                                                                             HF_CACHE_ROOT: hf_cache}


@app.cls(gpu=DEFAULT_GPU, timeout=TIMEOUT_S, volumes=VOLUMES, secrets=SECRETS, cpu=TRAINER_CPU,
         memory=TRAINER_MEMORY_MIB, single_use_containers=True,
         retries=modal.Retries(max_retries=3, initial_delay=10.0))
class Trainer:
    """One training run per call, in a fresh container (a retry never inherits a dirty GPU); preemption
    restarts the input, which resumes from its last complete checkpoint."""

    @modal.method()
    def train(self, config: dict[str, Any], run_id: str) -> dict[str, Any]:
        return container_train(config, run_id)


def container_train(config: dict[str, Any], run_id: str, runs_root: str = RUNS_ROOT,
                    client: "modal.Client | None" = None, require_cuda: bool = True) -> dict[str, Any]:
    """The container's side of a run: Modal objects around the Modal-free body in remote.py.
    `runs_root` and `client` let the tests run it against the fake control plane."""
    import queue as stdlib_queue

    from .remote import remote_train

    events = modal.Queue.from_name(EVENTS_QUEUE, create_if_missing=True, client=client)
    flags = modal.Dict.from_name(CANCEL_DICT, create_if_missing=True, client=client)
    runs = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True, client=client)
    runs.reload()

    def publish(batch: list[dict[str, Any]]) -> bool:
        # Never block: a partition holds 5,000 items and nobody may be draining it; the Volume has all.
        try:
            events.put_many(batch, block=False, partition=run_id)
            return True
        except stdlib_queue.Full:
            return False

    return remote_train(config, run_id, runs_root, publish=publish, commit=runs.commit,
                        cancelled=lambda: bool(flags.get(run_id, False)), require_cuda=require_cuda)


@app.cls(gpu="L40S", volumes=VOLUMES, secrets=SECRETS, scaledown_window=300, min_containers=0)
class Chat:
    """Serves a base model plus a run's adapter from the Volume; streams text; scales to zero."""

    run_id: str = modal.parameter(default="")

    @modal.enter()
    def load(self) -> None:
        volume.reload()
        self.model = chat_model_for(self.run_id, RUNS_ROOT)

    @modal.method()
    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, adapter: str = "default"):
        yield from self.model.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_p=top_p, adapter=adapter)


def chat_model_for(run_id: str, runs_root: str) -> Any:
    import json

    from ..core.models import resolve_model
    from ..serving import ChatModel

    config = json.loads(open(f"{runs_root}/{run_id}/config.json", encoding="utf-8").read())
    return ChatModel(resolve_model(config["model"]), f"{runs_root}/{run_id}/adapter")
