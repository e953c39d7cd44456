"""The Modal app: image, Volume, Queue, the GPU training class and the chat serving class.

Importable without torch and without Modal credentials (everything here is lazy in Modal); the heavy
imports happen inside the methods, in the container. Deploy once with `nbfinetune deploy`.
Written against modal 1.6 (see ../shared/MODAL.md); it has not been run against real Modal from here.
"""

# No `from __future__ import annotations`: modal.parameter() reads real type annotations.

import os
from typing import Any

import modal

APP_NAME = "nbfinetune"
RUNS_VOLUME = "nbfinetune-runs"
EVENTS_QUEUE = "nbfinetune-events"
CANCEL_DICT = "nbfinetune-cancel"
RUNS_ROOT = "/runs"
DEFAULT_GPU = "A10"
TIMEOUT_S = 24 * 3600
HF_SECRET = os.environ.get("NBFINETUNE_MODAL_HF_SECRET", "")  # e.g. "huggingface-secret" with HF_TOKEN
PACKAGES = ["torch==2.13.0", "transformers==5.24.0", "peft==0.21.2", "datasets==5.2.0", "safetensors==0.8.0",
            "huggingface_hub==2.4.0", "pyyaml", "tqdm", "bitsandbytes==0.50.2",
            "cloudpickle==3.1.3"]  # GRPO rewards sent by value (train.reward_code)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(*PACKAGES)
    .env({"HF_HOME": f"{RUNS_ROOT}/hf-cache", "TOKENIZERS_PARALLELISM": "false"})
    # Our own source, data files included (samples, prices); not the built JupyterLab extension.
    .add_local_python_source("nbfinetune", ignore=["**/__pycache__", "**/*.pyc", "**/labextension/**"])
)
app = modal.App(APP_NAME, image=image)
volume = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)
SECRETS = [modal.Secret.from_name(HF_SECRET, required_keys=["HF_TOKEN"])] if HF_SECRET else []


@app.cls(gpu=DEFAULT_GPU, timeout=TIMEOUT_S, volumes={RUNS_ROOT: volume}, secrets=SECRETS,
         retries=modal.Retries(max_retries=3, initial_delay=10.0))
class Trainer:
    """One training run per call; preemption restarts the input, which resumes from its checkpoint."""

    @modal.method()
    def train(self, config: dict[str, Any], run_id: str) -> dict[str, Any]:
        from .remote import remote_train

        queue = modal.Queue.from_name(EVENTS_QUEUE, create_if_missing=True)
        flags = modal.Dict.from_name(CANCEL_DICT, create_if_missing=True)
        volume.reload()
        return remote_train(config, run_id, RUNS_ROOT,
                            publish=lambda event: queue.put(event, partition=run_id),
                            commit=volume.commit, cancelled=lambda: bool(flags.get(run_id, False)))


@app.cls(gpu="L40S", volumes={RUNS_ROOT: volume}, secrets=SECRETS, scaledown_window=300, min_containers=0)
class Chat:
    """Serves a base model plus a run's adapter from the Volume; streams text; scales to zero."""

    run_id: str = modal.parameter(default="")

    @modal.enter()
    def load(self) -> None:
        import json

        from ..core.models import resolve_model
        from ..serving import ChatModel

        volume.reload()
        config = json.loads(open(f"{RUNS_ROOT}/{self.run_id}/config.json", encoding="utf-8").read())
        self.model = ChatModel(resolve_model(config["model"]), f"{RUNS_ROOT}/{self.run_id}/adapter")

    @modal.method()
    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0):
        yield from self.model.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)
