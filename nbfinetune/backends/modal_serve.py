"""Serving on Modal: one vLLM engine per base model with LoRA enabled; every run's adapter is loaded from
the runs Volume per request (vLLM's LoRARequest), behind the same OpenAI-compatible API and bearer key
as the local server; scales to zero.

Three parts, of which only the first two run here:
- pure functions mapping a validated ChatRequest to vLLM's SamplingParams / LoRARequest arguments and
  picking the GPU and `max_lora_rank` (tested offline);
- `build_app(spec)`: the Modal app for one base model (lazy; builds offline);
- the container side (`VLLMServer`), which needs CUDA and vLLM: not run from our machines.

Written against modal 1.6 and vLLM's AsyncLLM API (v1 engine); unverified on Modal from here.
"""

# No `from __future__ import annotations`: modal.parameter() reads real type annotations.

import hashlib
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..serve.protocol import ChatRequest

SERVE_APP_PREFIX = "nbfinetune-serve"
VLLM_PACKAGES = ["vllm==0.11.0", "pyyaml", "tqdm"]  # vLLM brings its own torch and transformers
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
SCALEDOWN_S = 300
MAX_INPUTS = 64  # concurrent requests per container: vLLM batches them continuously
# (GPU, usable GiB) from small to large; the first that holds weights plus room for the KV cache wins.
GPUS = (("L4", 24), ("L40S", 48), ("A100-80GB", 80), ("H200", 141))
DEFAULT_MAX_TOKENS = 512
KEY_RECHECK_S = 10.0  # a container re-reads the key's hash for an unknown key at most this often
READY_POLL_S = 5.0  # how often the notebook asks a cold-starting endpoint whether it answers yet


@dataclass
class ServeSpec:
    """What one deployment serves: a base model and the runs whose adapters it may load."""

    base_model: str
    run_ids: list[str] = field(default_factory=list)
    max_lora_rank: int = 16
    gpu: str = "L4"

    @property
    def app_name(self) -> str:
        return app_name_for(self.base_model)


def app_name_for(base_model: str) -> str:
    """One deployed app per base model; Modal app names allow [a-z0-9-], at most 64 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", base_model.lower()).strip("-")[:30]
    return f"{SERVE_APP_PREFIX}-{slug}-{zlib.crc32(base_model.encode()):08x}"


def lora_rank_bucket(ranks: list[int]) -> int:
    """The smallest max_lora_rank vLLM accepts that covers every run's LoRA r."""
    need = max(ranks, default=8)
    for rank in LORA_RANKS:
        if rank >= need:
            return rank
    raise ValueError(f"lora.r: {need} exceeds the largest rank vLLM serves ({LORA_RANKS[-1]})")


def gpu_for(parameters: int, bytes_per_parameter: int = 2) -> str:
    """The smallest GPU whose memory holds the bf16 weights with room for the KV cache (weights ≤ 60%)."""
    gib = parameters * bytes_per_parameter / 2**30
    for gpu, memory in GPUS:
        if gib <= 0.6 * memory:
            return gpu
    raise ValueError(f"model: {gib:.0f} GiB of weights does not fit one GPU; use a smaller base model")


def lora_int_id(run_id: str) -> int:
    """vLLM identifies an adapter by a positive int: stable per run, so a container reuses its cache."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big") % (2**31 - 1) + 1


def lora_request_kwargs(run_id: str, runs_root: str) -> dict[str, Any]:
    """Arguments for vllm.lora.request.LoRARequest(**kwargs) for a run's adapter on the Volume."""
    return {"lora_name": run_id, "lora_int_id": lora_int_id(run_id),
            "lora_path": f"{runs_root}/{run_id}/adapter"}


def sampling_kwargs(request: ChatRequest, room: int) -> dict[str, Any]:
    """Arguments for vllm.SamplingParams(**kwargs): the OpenAI request's sampling, limits and stops.
    room: tokens left in the context after the prompt."""
    max_tokens = request.max_tokens or min(DEFAULT_MAX_TOKENS, room)
    return {"n": 1, "temperature": request.sampling.temperature, "top_p": request.sampling.top_p,
            "max_tokens": max_tokens, "stop": list(request.stop), "skip_special_tokens": True}


def spec_for_runs(runs: list[Any]) -> ServeSpec:
    """The deployment for runs trained from one base model: rank and GPU from their configs."""
    bases = {run.config.model for run in runs}
    if len(bases) != 1:
        raise ValueError("serve --backend modal: one base model per deployment; "
                         f"these runs use {sorted(bases)}")
    base = bases.pop()
    # Only adapters on the runs Volume can be served from it: each run's backend knows where its adapter is.
    missing = [run.id for run in runs if run.backend.remote_adapter_path(run.id) is None]
    if missing:
        raise ValueError(f"serve --backend modal: runs {missing} trained locally; their adapters are not on "
                         "the Modal Volume (serve them with backend='local')")
    return ServeSpec(base, [run.id for run in runs], lora_rank_bucket([run.config.lora.r for run in runs]),
                     gpu_for(_parameter_count(base)))


def _parameter_count(model: str) -> int:
    """From the model's config (local cache) when available; else a guess from the name ("7B", "135M")."""
    import json
    from pathlib import Path

    from ..core.models import resolve_model

    try:
        config = json.loads((Path(resolve_model(model)) / "config.json").read_text())
        hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        inter = config.get("intermediate_size", 4 * hidden)
        return layers * (4 * hidden * hidden + 3 * hidden * inter) + vocab * hidden
    except Exception:  # noqa: BLE001 — not cached here: read the size from the name
        found = re.search(r"(\d+(?:\.\d+)?)\s*([BbMm])\b", model.replace("-", " "))
        if not found:
            return 8 * 10**9  # unknown: assume a mid-size model
        return int(float(found.group(1)) * (10**9 if found.group(2).lower() == "b" else 10**6))


# --- the Modal app (lazy: builds offline) ------------------------------------------------------------
def image_env(spec: ServeSpec) -> dict[str, str]:
    """The serving image's environment. Weights come from the training app's HF cache Volume (a base
    model trained on is already there); on the runs Volume they would be committed along with the runs."""
    from .modal_app import HF_CACHE_ROOT, HF_SECRET, HF_SECRET_ENV

    return {"HF_HOME": HF_CACHE_ROOT, HF_SECRET_ENV: HF_SECRET, "NBFT_BASE_MODEL": spec.base_model,
            "NBFT_MAX_LORA_RANK": str(spec.max_lora_rank), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}


def build_app(spec: ServeSpec) -> Any:
    """The Modal app serving spec.base_model: class VLLMServer with an ASGI web endpoint."""
    import modal

    from . import modal_app
    from .modal_app import HF_CACHE_ROOT, HF_CACHE_VOLUME, RUNS_ROOT, RUNS_VOLUME

    image = (modal.Image.debian_slim(python_version="3.11")
             .uv_pip_install(*VLLM_PACKAGES)
             .env(image_env(spec))
             .add_local_python_source("nbfinetune",
                                      ignore=["**/__pycache__", "**/*.pyc", "**/labextension/**"]))
    app = modal.App(spec.app_name, image=image)
    volume = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)
    hf_cache = modal.Volume.from_name(HF_CACHE_VOLUME, create_if_missing=True)

    # The training app's HF_TOKEN secret, for gated base models (read at call time: tests replace it).
    @app.cls(gpu=spec.gpu, volumes={RUNS_ROOT: volume, HF_CACHE_ROOT: hf_cache}, secrets=modal_app.SECRETS,
             scaledown_window=SCALEDOWN_S, min_containers=0, timeout=3600, serialized=True)
    @modal.concurrent(max_inputs=MAX_INPUTS)
    class VLLMServer:
        @modal.enter()
        def load(self) -> None:
            # Absolute: this class is pickled by value.
            from nbfinetune.backends.modal_serve import start_engine

            volume.reload()
            self.state = start_engine(RUNS_ROOT, volume)

        @modal.asgi_app()
        def web(self) -> Any:
            from nbfinetune.backends.modal_serve import asgi_app

            return asgi_app(self.state)

    return app


def key_path(runs_root: str, app_name: str) -> str:
    """Where the deployment's key hash lives on the Volume (the key itself is never stored)."""
    return f"{runs_root}/serving/{app_name}.sha256"


@dataclass
class KeyCheck:
    """The deployment's key, known by its hash on the runs Volume. A later `serve` stores a new hash while
    warm containers keep running (a deploy that changes nothing leaves them up), so an unknown key makes
    the container read the hash again — at most every KEY_RECHECK_S, so wrong keys cannot keep it
    reloading the Volume."""

    path: str
    reload: Callable[[], None]
    digest: str = ""
    checked_at: float = float("-inf")

    def read(self) -> None:
        self.checked_at = time.monotonic()
        try:
            self.reload()
        except Exception:  # noqa: BLE001 — Modal refuses a reload while files are open: read what is mounted
            pass
        try:
            self.digest = Path(self.path).read_text().strip()
        except OSError:
            pass  # not there (yet): keep the key we know

    def accepts(self, token: str) -> bool:
        if self._matches(token):
            return True
        if not token or time.monotonic() - self.checked_at < KEY_RECHECK_S:
            return False
        self.read()
        return self._matches(token)

    def _matches(self, token: str) -> bool:
        import hmac

        from ..serve.tokens import token_hash

        return bool(token and self.digest) and hmac.compare_digest(token_hash(token), self.digest)


# --- container side (CUDA + vLLM; not run here) -------------------------------------------------------
@dataclass
class EngineState:
    engine: Any
    base_model: str
    runs_root: str
    volume: Any
    keys: KeyCheck
    context_length: int
    tokenizers: dict[str, Any] = field(default_factory=dict)


def start_engine(runs_root: str, volume: Any) -> EngineState:
    import os

    from vllm import AsyncEngineArgs, AsyncLLMEngine

    from ..core.models import resolve_model

    base = os.environ["NBFT_BASE_MODEL"]
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=resolve_model(base), enable_lora=True, max_lora_rank=int(os.environ["NBFT_MAX_LORA_RANK"]),
        max_loras=8, enable_prefix_caching=True))
    keys = KeyCheck(key_path(runs_root, app_name_for(base)), volume.reload)
    keys.read()
    context = engine.model_config.max_model_len if hasattr(engine, "model_config") else 4096
    return EngineState(engine, base, runs_root, volume, keys, context)


def _tokenizer(state: EngineState, model: str) -> Any:
    """The adapter's own tokenizer (its training chat template), or the base model's."""
    from pathlib import Path

    from ..core.models import resolve_model
    from ..core.setup import load_tokenizer

    if model not in state.tokenizers:
        adapter = Path(state.runs_root) / model / "adapter"
        state.tokenizers[model] = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").is_file()
                                                 else resolve_model(state.base_model))
    return state.tokenizers[model]


def asgi_app(state: EngineState) -> Any:
    """The OpenAI-compatible routes over vLLM (FastAPI ships with vLLM)."""
    import json
    import uuid

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from ..data.render import render_prompt
    from ..serve import protocol
    from ..serve.protocol import APIError

    web = FastAPI()

    @web.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @web.exception_handler(Exception)
    async def any_error(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(APIError(500, "internal error", type="server_error").body(), status_code=500)

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not state.keys.accepts(token):
            raise APIError(401, "missing or incorrect API key", code="invalid_api_key")

    def served(name: str) -> bool:
        if name == state.base_model:
            return True
        if not (Path(state.runs_root) / name / "adapter").is_dir():
            state.volume.reload()  # a run that finished after this container started
        return (Path(state.runs_root) / name / "adapter" / "adapter_config.json").is_file()

    @web.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        runs = [p.name for p in Path(state.runs_root).iterdir()
                if (p / "adapter" / "adapter_config.json").is_file()]
        return JSONResponse(protocol.model_list([(state.base_model, "base")]
                                                + [(r, f"run {r}") for r in runs]))

    @web.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        authorize(request)
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None
        req = protocol.parse_chat_request(body)
        if not served(req.model):
            raise APIError(404, f"model: no served model named {req.model!r}", param="model",
                           code="model_not_found")
        tokenizer = _tokenizer(state, req.model)
        ids = tokenizer(render_prompt(tokenizer, req.messages), add_special_tokens=False)["input_ids"]
        room = state.context_length - len(ids)
        if room < 1 or (req.max_tokens or 0) > room:
            raise APIError(413, f"messages: {len(ids)} prompt tokens plus max_tokens exceed the context of "
                                f"{state.context_length}", param="max_tokens" if room >= 1 else "messages")
        lora = (None if req.model == state.base_model
                else LoRARequest(**lora_request_kwargs(req.model, state.runs_root)))
        rid = protocol.completion_id()
        outputs = state.engine.generate({"prompt_token_ids": ids},
                                        SamplingParams(**sampling_kwargs(req, room)),
                                        request_id=f"{rid}-{uuid.uuid4().hex[:6]}", lora_request=lora)
        if not req.stream:
            final: Any = None
            async for final in outputs:  # noqa: B007 — the last output holds the whole answer
                pass
            out = final.outputs[0]
            return JSONResponse(protocol.completion(rid, req.model, out.text, out.finish_reason or "stop",
                                                    len(ids), len(out.token_ids)))

        async def events() -> Any:
            sent, first, out = 0, True, None
            async for result in outputs:
                out = result.outputs[0]
                delta = out.text[sent:]
                sent = len(out.text)
                if delta or first:
                    chunk = protocol.chunk(rid, req.model, {"role": "assistant", "content": delta} if first
                                           else {"content": delta})
                    yield f"data: {json.dumps(chunk)}\n\n"
                    first = False
            last = protocol.chunk(rid, req.model, {}, (out and out.finish_reason) or "stop")
            yield f"data: {json.dumps(last)}\n\n"
            if req.include_usage and out is not None:
                usage = protocol.usage(len(ids), len(out.token_ids))
                yield f"data: {json.dumps(protocol.chunk(rid, req.model, {}, usage_=usage))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return web


# --- the notebook side --------------------------------------------------------------------------------
@dataclass
class ModalServer:
    base_url: str
    models: list[str]
    api_key: str = field(repr=False)
    app_name: str = ""

    def _repr_html_(self) -> str:
        import html

        return (f"<div>OpenAI-compatible API on Modal at <code>{html.escape(self.base_url)}</code> · models: "
                + ", ".join(f"<code>{html.escape(m)}</code>" for m in self.models)
                + " (scales to zero)</div>")


def serve_modal(runs: list[Any], api_key: str | None = None, wait_s: float = 900.0, quiet: bool = False,
                show_key: bool = True, **_ignored: Any) -> ModalServer:
    """Deploy (or update) the base model's vLLM app, store the key's hash on the Volume, print the URL,
    then wait for the first container to answer, showing cold-start progress. show_key=False: a new key
    stays in `server.api_key` only (a notebook's outputs are saved to a file)."""
    import modal

    from ..serve.tokens import new_token, record, token_hash
    from .modal_app import RUNS_VOLUME
    from .modal_chat import remote_adapter_exists
    from .modal_credentials import require_credentials

    require_credentials()  # empty values count as missing; a `modal token new` since import is read
    spec = spec_for_runs(runs)
    # Checked before deploying: a container would only answer 404 for it, after a billed cold start.
    for run_id in spec.run_ids:
        if not remote_adapter_exists(run_id):
            raise RuntimeError(f"run {run_id} has no adapter on the Modal Volume yet; wait for it to finish "
                               "or cancel it — a cancelled run keeps its adapter")
    key = api_key or new_token()
    volume = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)
    # The deployment serves every run on the Volume: its rank never shrinks below what it served before.
    spec.max_lora_rank = max(spec.max_lora_rank, _deployed_rank(volume, spec.app_name))
    with volume.batch_upload(force=True) as upload:
        import io
        import json

        upload.put_file(io.BytesIO(token_hash(key).encode()), key_path("", spec.app_name).lstrip("/"))
        upload.put_file(io.BytesIO(json.dumps({"max_lora_rank": spec.max_lora_rank}).encode()),
                        _deployment_path(spec.app_name))
    app = build_app(spec)
    with modal.enable_output():
        app.deploy(name=spec.app_name)
    url = modal.Cls.from_name(spec.app_name, "VLLMServer")().web.get_web_url().rstrip("/") + "/v1"
    server = ModalServer(url, [spec.base_model, *spec.run_ids], key, spec.app_name)
    for run in runs:
        record(run.path, token_hash(key), url, server.models)
    if not quiet:
        print(f"OpenAI-compatible API on Modal at {url} · {spec.gpu}, max LoRA rank {spec.max_lora_rank} · "
              f"models: {', '.join(server.models)}")
        if api_key is None and show_key:
            print(f"API key (shown once, stored only as a hash): {key}")
        elif api_key is None:
            print("API key: in server.api_key (not printed: notebook outputs are saved to disk)")
    wait_until_ready(url, key, wait_s, quiet)
    return server


def _deployment_path(app_name: str) -> str:
    return f"serving/{app_name}.json"


def _deployed_rank(volume: Any, app_name: str) -> int:
    """The max_lora_rank the base model's deployment was last given (0 before its first)."""
    import json

    try:
        return int(json.loads(b"".join(volume.read_file(_deployment_path(app_name))))["max_lora_rank"])
    except FileNotFoundError:
        return 0


def wait_until_ready(url: str, key: str, wait_s: float, quiet: bool = False,
                     poll_s: float | None = None) -> None:
    """Poll /v1/models until a container answers (a cold start loads vLLM and the weights)."""
    import httpx

    poll_s = READY_POLL_S if poll_s is None else poll_s
    started = time.monotonic()
    while time.monotonic() - started < wait_s:
        # Modal holds a request to a cold endpoint until a container is up: never past wait_s.
        left = wait_s - (time.monotonic() - started)
        try:
            response = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"},
                                 timeout=max(0.1, min(60.0, left)))
            if response.status_code == 200:
                if not quiet:
                    print(f"ready after {time.monotonic() - started:.0f} s")
                return
            state = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            state = type(exc).__name__
        if not quiet:
            print(f"cold start: waiting for a container ({time.monotonic() - started:.0f} s, {state})",
                  flush=True)
        time.sleep(max(0.0, min(poll_s, wait_s - (time.monotonic() - started))))
    raise TimeoutError(f"the Modal endpoint did not answer within {wait_s:.0f} s; it keeps starting in the "
                       "background — try again shortly")
