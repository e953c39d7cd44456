"""Serving on Modal, offline: the request mapping to vLLM's arguments, the deployment's choices (GPU, LoRA
rank, name) and the app definition. vLLM and Modal's servers are out of reach from here."""

from __future__ import annotations

import re
import warnings
from types import SimpleNamespace

import pytest

from nbfinetune.backends import modal_serve
from nbfinetune.backends.modal_serve import (ServeSpec, app_name_for, build_app, gpu_for, lora_rank_bucket,
                                             lora_request_kwargs, sampling_kwargs, spec_for_runs)
from nbfinetune.serve.protocol import parse_chat_request


def test_sampling_maps_the_openai_request():
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                                  "top_p": 0.5, "max_tokens": 7, "stop": "END"})
    assert sampling_kwargs(request, room=100) == {"n": 1, "temperature": 0.0, "top_p": 0.5, "max_tokens": 7,
                                                  "stop": ["END"], "skip_special_tokens": True}
    unlimited = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert sampling_kwargs(unlimited, room=100)["max_tokens"] == 100  # never past the context
    assert sampling_kwargs(unlimited, room=10_000)["max_tokens"] == modal_serve.DEFAULT_MAX_TOKENS
    assert sampling_kwargs(unlimited, room=100)["temperature"] == 1.0  # OpenAI's default


def test_lora_request_names_the_runs_adapter_on_the_volume_with_a_stable_id():
    first = lora_request_kwargs("20261126-101010-abcdef", "/runs")
    assert first == {"lora_name": "20261126-101010-abcdef", "lora_int_id": first["lora_int_id"],
                     "lora_path": "/runs/20261126-101010-abcdef/adapter"}
    assert first == lora_request_kwargs("20261126-101010-abcdef", "/runs")
    other = lora_request_kwargs("20261126-101010-abcdee", "/runs")
    assert 0 < first["lora_int_id"] < 2**31 and other["lora_int_id"] != first["lora_int_id"]


def test_rank_gpu_and_app_name_choices():
    assert lora_rank_bucket([8, 12]) == 16 and lora_rank_bucket([64]) == 64 and lora_rank_bucket([300]) == 320
    with pytest.raises(ValueError, match="lora.r"):
        lora_rank_bucket([1024])
    assert gpu_for(135_000_000) == "L4" and gpu_for(8_000_000_000) == "L40S"
    assert gpu_for(20_000_000_000) == "A100-80GB"
    assert gpu_for(32_000_000_000) == "H200"
    with pytest.raises(ValueError, match="model"):
        gpu_for(405_000_000_000)
    name = app_name_for("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert re.fullmatch(r"[a-z0-9-]{1,64}", name) and name != app_name_for("HuggingFaceTB/SmolLM2-360M-Instruct")


def _run(run_id, model="org/Model-8B", r=16, backend="modal"):
    from nbfinetune.backends import get_backend

    config = SimpleNamespace(model=model, backend=backend, lora=SimpleNamespace(r=r))
    return SimpleNamespace(id=run_id, config=config, backend=get_backend(backend))


def test_one_deployment_per_base_model_sized_from_the_runs():
    spec = spec_for_runs([_run("a", r=8), _run("b", r=48)])
    assert spec == ServeSpec("org/Model-8B", ["a", "b"], 64, "L40S")
    with pytest.raises(ValueError, match="one base model"):
        spec_for_runs([_run("a"), _run("b", model="org/Other-1B")])
    with pytest.raises(ValueError, match="trained locally"):
        spec_for_runs([_run("a", backend="local")])


def test_app_definition_scales_to_zero_on_the_chosen_gpu_with_a_web_endpoint():
    spec = ServeSpec("HuggingFaceTB/SmolLM2-135M-Instruct", ["r1"], 16, "L40S")
    app = build_app(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        functions, web = app.registered_functions, app.registered_web_endpoints
    assert app.name == spec.app_name and web == ["VLLMServer.web"]
    function_spec = functions["VLLMServer.*"]._spec_
    assert function_spec.gpus == "L40S" and "/runs" in function_spec.volumes


def test_serving_on_modal_needs_credentials(monkeypatch):
    import modal

    monkeypatch.setattr(modal.config.config, "get", lambda key, *a, **k: None)
    with pytest.raises(RuntimeError, match="credentials"):
        modal_serve.serve_modal([_run("a")])


def test_a_warm_container_takes_the_key_of_a_later_serve_and_wrong_keys_do_not_reload(tmp_path, monkeypatch):
    """A second `serve` stores a new key's hash while containers stay warm (a deploy that changes nothing
    leaves them up): the container reads the hash again for a key it does not know, not on every request."""
    from nbfinetune.backends.modal_serve import KeyCheck
    from nbfinetune.serve.tokens import token_hash

    stored = tmp_path / "app.sha256"
    stored.write_text(token_hash("nbft-first"))
    reloads = []
    keys = KeyCheck(str(stored), lambda: reloads.append(1))
    keys.read()
    assert keys.accepts("nbft-first") and not keys.accepts("") and not keys.accepts("nbft-second")
    stored.write_text(token_hash("nbft-second"))  # what the container sees after a Volume reload
    assert not keys.accepts("nbft-second") and len(reloads) == 1  # re-read at most every KEY_RECHECK_S
    monkeypatch.setattr(modal_serve, "KEY_RECHECK_S", 0.0)
    assert keys.accepts("nbft-second") and not keys.accepts("nbft-first") and len(reloads) == 3
