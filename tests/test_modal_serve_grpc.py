"""Serving on Modal, client side, through the real `modal` library against the fake control plane
(tests/modal_fake): `run.serve(backend="modal")` deploys the vLLM app, puts the key's hash on the runs
Volume, reads the endpoint's URL back from Modal and waits for it to answer.

Stand-ins, said plainly: the runs are synthetic with their adapter files put on the fake Volume (no
training); no container runs VLLMServer (vLLM needs CUDA) — the web endpoint is answered by
`OpenAIStandIn` below, which checks the bearer key against the hash the client stored on the Volume and
the model name against the adapters on the Volume, the way modal_serve.asgi_app does."""

from __future__ import annotations

import json

import pytest
from modal_proto import api_pb2

from nbfinetune import api
from nbfinetune.backends import modal_app, modal_serve
from nbfinetune.config import RunConfig
from nbfinetune.runs import RunStore
from tests.helpers import synthetic_run
from tests.modal_fake.web import web_handlers, web_label


def _modal_run(fake, store, model, r=8, on_volume=True):
    config = RunConfig()
    config.model, config.backend, config.lora.r = model, "modal", r
    run_id = synthetic_run(store, config)
    if on_volume:  # what the training container commits at the end of a run
        volume = fake.volumes[fake.named_object("volume", modal_app.RUNS_VOLUME, True, fake.volumes)]
        volume[f"{run_id}/adapter/adapter_config.json"] = json.dumps({"r": r}).encode()
        volume[f"{run_id}/adapter/adapter_model.safetensors"] = b"weights"
    return api.Run(run_id, store)


class OpenAIStandIn:
    """Answers the deployed endpoint in place of VLLMServer: /v1/models and non-streaming chat."""

    def __init__(self, fake, app_name):
        self.fake, self.app_name, self.requests = fake, app_name, []

    def _volume(self):
        return self.fake.volumes[self.fake.named[("volume", modal_app.RUNS_VOLUME)]]

    async def __call__(self, request, path):
        from aiohttp import web

        from nbfinetune.serve import protocol
        from nbfinetune.serve.tokens import token_hash

        stored = self._volume().get(modal_serve.key_path("", self.app_name).lstrip("/"), b"").decode()
        header = request.headers.get("Authorization", "")
        self.requests.append((request.method, path))
        if not stored or token_hash(header.removeprefix("Bearer ")) != stored:
            error = protocol.APIError(401, "missing or incorrect API key", code="invalid_api_key")
            return web.json_response(error.body(), status=401)
        adapters = sorted({name.split("/")[0] for name in self._volume()
                           if name.endswith("/adapter_config.json")})
        if path == "/v1/models":
            return web.json_response(protocol.model_list([(a, "run") for a in adapters]))
        body = await request.json()
        if body["model"] not in adapters:
            error = protocol.APIError(404, f"model: no served model named {body['model']!r}", param="model")
            return web.json_response(error.body(), status=404)
        text = f"answer from {body['model']}"
        return web.json_response(protocol.completion("chatcmpl-1", body["model"], text, "stop", 3, 3))


def _stand_in(fake, tiny_model):
    app_name = modal_serve.app_name_for(tiny_model)
    stand_in = OpenAIStandIn(fake, app_name)
    web_handlers(fake)[web_label(app_name, "VLLMServer-web")] = stand_in
    return stand_in


def _deployed(fake, app_name, tag):
    return fake.functions[fake.apps[app_name][tag]].definition


def test_serving_a_modal_run_deploys_the_app_and_answers_at_its_web_url(modal_fake, tiny_model, capsys):
    import openai

    store = RunStore()
    first = _modal_run(modal_fake, store, tiny_model, r=8)
    second = _modal_run(modal_fake, store, tiny_model, r=32)
    stand_in = _stand_in(modal_fake, tiny_model)
    server = api.serve([first, second], backend="modal", store=store, wait_s=30)
    app_name = modal_serve.app_name_for(tiny_model)
    # The deployed class: a web endpoint (ASGI) on the GPU chosen for the model, the runs Volume mounted.
    service = _deployed(modal_fake, app_name, "VLLMServer.*")
    assert service.method_definitions["web"].webhook_config.type == api_pb2.WEBHOOK_TYPE_ASGI_APP
    assert service.resources.gpu_config.gpu_type == "L4"
    mounts = {mount.mount_path: mount.volume_id for mount in service.volume_mounts}
    assert mounts[modal_app.RUNS_ROOT] == modal_fake.named[("volume", modal_app.RUNS_VOLUME)]
    # The URL is Modal's (read back from the deployment), and the key works there; its hash only is stored.
    assert server.base_url == f"{modal_fake.blob_url}/web/{web_label(app_name, 'VLLMServer-web')}/v1"
    assert server.models == [tiny_model, first.id, second.id]
    stored = modal_fake.committed_file(modal_app.RUNS_VOLUME, f"serving/{app_name}.sha256").decode()
    assert server.api_key not in stored and len(stored) == 64
    assert json.loads((first.path / "serving.json").read_text())["sessions"][-1]["url"] == server.base_url
    printed = capsys.readouterr().out
    assert server.base_url in printed and "max LoRA rank 32" in printed and "ready after" in printed
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    assert {m.id for m in client.models.list().data} == {first.id, second.id}
    answer = client.chat.completions.create(model=second.id, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == f"answer from {second.id}"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="nbft-wrong").models.list()
    assert ("GET", "/v1/models") in stand_in.requests  # the readiness poll reached the endpoint


def test_in_a_notebook_the_new_key_is_not_printed(modal_fake, tiny_model, capsys):
    """api.serve passes show_key=False where outputs are saved to a file, as for the local server."""
    run = _modal_run(modal_fake, RunStore(), tiny_model)
    _stand_in(modal_fake, tiny_model)
    server = run.serve(backend="modal", wait_s=30, show_key=False)
    printed = capsys.readouterr().out
    assert server.api_key not in printed and "server.api_key" in printed


def test_the_base_model_comes_from_the_hf_cache_volume_with_the_hf_secret(modal_fake, tiny_model,
                                                                         monkeypatch):
    """The serving containers share the training app's weights cache (not the runs Volume, which would
    commit gigabytes of weights with the runs) and its HF_TOKEN secret (gated base models)."""
    import modal

    modal_fake.secrets["hf-secret"] = {"HF_TOKEN": "hf_x"}
    secret = modal.Secret.from_name("hf-secret", required_keys=["HF_TOKEN"])
    monkeypatch.setattr(modal_app, "SECRETS", [secret])
    run = _modal_run(modal_fake, RunStore(), tiny_model)
    _stand_in(modal_fake, tiny_model)
    run.serve(backend="modal", wait_s=30, quiet=True)
    service = _deployed(modal_fake, modal_serve.app_name_for(tiny_model), "VLLMServer.*")
    mounts = {mount.mount_path: mount.volume_id for mount in service.volume_mounts}
    assert mounts[modal_app.HF_CACHE_ROOT] == modal_fake.named[("volume", modal_app.HF_CACHE_VOLUME)]
    assert modal_fake.secret_ids["hf-secret"] in service.secret_ids


def test_a_run_whose_adapter_is_not_on_the_volume_is_refused_before_deploying(modal_fake, tiny_model):
    store = RunStore()
    ready, unfinished = _modal_run(modal_fake, store, tiny_model), _modal_run(modal_fake, store, tiny_model,
                                                                             on_volume=False)
    with pytest.raises(RuntimeError, match=f"{unfinished.id}.*no adapter on the Modal Volume"):
        api.serve([ready, unfinished], backend="modal", store=store, wait_s=30)
    assert modal_serve.app_name_for(tiny_model) not in modal_fake.apps  # nothing deployed, nothing billed


def test_cold_start_progress_then_ready(modal_fake, tiny_model, monkeypatch, capsys):
    from aiohttp import web

    monkeypatch.setattr(modal_serve, "READY_POLL_S", 0.05)
    run = _modal_run(modal_fake, RunStore(), tiny_model)
    stand_in = _stand_in(modal_fake, tiny_model)
    label = web_label(modal_serve.app_name_for(tiny_model), "VLLMServer-web")
    starting = [503, 503]

    async def cold(request, path):  # the first container is still loading vLLM and the weights
        return web.Response(status=starting.pop()) if starting else await stand_in(request, path)

    web_handlers(modal_fake)[label] = cold
    run.serve(backend="modal", wait_s=30)
    printed = capsys.readouterr().out
    assert printed.count("cold start: waiting for a container") == 2 and "HTTP 503" in printed
    assert "ready after" in printed
    starting.extend([503] * 1000)
    with pytest.raises(TimeoutError, match="did not answer within"):
        run.serve(backend="modal", wait_s=0.3, quiet=True)


def test_a_request_held_by_a_cold_start_does_not_outlast_wait_s(modal_fake, tiny_model):
    """Modal holds a request to a cold endpoint until a container is up: wait_s bounds that wait too."""
    import asyncio
    import time

    from aiohttp import web

    run = _modal_run(modal_fake, RunStore(), tiny_model)
    label = web_label(modal_serve.app_name_for(tiny_model), "VLLMServer-web")

    async def held(request, path):
        await asyncio.sleep(20)
        return web.Response(status=200)

    web_handlers(modal_fake)[label] = held
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer within 1 s"):
        run.serve(backend="modal", wait_s=1, quiet=True)
    assert time.monotonic() - started < 10


def test_the_command_line_deploys_prints_url_and_key_and_returns(modal_fake, tiny_model, capsys):
    """`nbfinetune serve RUN --backend modal`: the deployment outlives the command, which returns."""
    from nbfinetune import cli

    run = _modal_run(modal_fake, RunStore(), tiny_model)
    stand_in = _stand_in(modal_fake, tiny_model)
    assert cli.main(["serve", run.id, "--backend", "modal"]) == 0
    printed = capsys.readouterr().out
    assert "OpenAI-compatible API on Modal at http://127.0.0.1" in printed
    assert "API key (shown once" in printed
    assert ("GET", "/v1/models") in stand_in.requests


def test_the_command_line_serves_on_modal_with_the_key_from_api_key_env(modal_fake, tiny_model, capsys,
                                                                       monkeypatch):
    """--api-key-env names the key for a Modal deployment too: it is the one accepted, and never printed."""
    import openai

    from nbfinetune import cli

    run = _modal_run(modal_fake, RunStore(), tiny_model)
    _stand_in(modal_fake, tiny_model)
    monkeypatch.setenv("TEAM_SERVING_KEY", "sk-team-serving-key-1234")
    assert cli.main(["serve", run.id, "--backend", "modal", "--api-key-env", "TEAM_SERVING_KEY"]) == 0
    printed = capsys.readouterr().out
    assert "sk-team-serving-key-1234" not in printed and "API key (shown once" not in printed
    base_url = printed.split("OpenAI-compatible API on Modal at ", 1)[1].split()[0]
    client = openai.OpenAI(base_url=base_url, api_key="sk-team-serving-key-1234", max_retries=0)
    assert [m.id for m in client.models.list().data] == [run.id]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()


@pytest.mark.train
def test_a_run_trained_through_the_fake_is_served_with_the_adapter_its_container_committed(modal_fake,
                                                                                          tiny_model):
    """The adapter's place on the Volume is where the training container commits it."""
    import openai

    run = api.finetune(model=tiny_model, backend="modal", steps=2, eval_samples=0, display=False)
    assert run.wait(timeout=120, progress=False).status == "finished", run.events()[-1]
    _stand_in(modal_fake, tiny_model)
    server = run.serve(backend="modal", wait_s=30, quiet=True)
    assert server.models == [tiny_model, run.id]
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    assert [m.id for m in client.models.list().data] == [run.id]


def test_serving_a_lower_rank_run_later_keeps_the_rank_of_the_runs_served_before(modal_fake, tiny_model,
                                                                                  capsys):
    """One deployment per base model serves every adapter on the Volume: a later serve of an r=8 run must
    not redeploy with max_lora_rank 8 while an r=64 run is still served by it."""
    store = RunStore()
    wide = _modal_run(modal_fake, store, tiny_model, r=64)
    narrow = _modal_run(modal_fake, store, tiny_model, r=8)
    _stand_in(modal_fake, tiny_model)
    wide.serve(backend="modal", wait_s=30)
    assert "max LoRA rank 64" in capsys.readouterr().out
    narrow.serve(backend="modal", wait_s=30)
    assert "max LoRA rank 64" in capsys.readouterr().out
