"""The training core on each architecture family and precision: tiny random models built from each
family's config (CPU, seconds), checked against the model's own loss and the padded batch."""

from __future__ import annotations

import pytest
import torch

from nbfinetune.core.batching import collate, pick_layout
from nbfinetune.core.evaluate import summed_loss
from nbfinetune.data.render import IGNORE

from tests.helpers import tiny_config


@pytest.fixture(scope="session")
def family_model(tiny_model, tmp_path_factory):
    from nbfinetune.testing import make_tiny_family_model

    root = tmp_path_factory.mktemp("families")
    return lambda family: str(make_tiny_family_model(root / family, family, tiny_model))


def _examples(tokenizer, n=4):
    from nbfinetune.config import DataSettings
    from nbfinetune.data.prepare import prepare

    return prepare(DataSettings(), tokenizer).train[:n]


def _reference_loss(model, examples) -> float:
    """The model's own loss (its own logit processing), summed over trained tokens."""
    total = 0.0
    for e in examples:
        labels = torch.tensor([[IGNORE] + e.targets[:-1]])
        total += float(model(input_ids=torch.tensor([e.input_ids]), labels=labels).loss) * e.trained_tokens
    return total


@pytest.mark.parametrize("family", ["granite", "cohere", "gemma2", "gpt_oss", "qwen2", "gemma3", "lfm2"])
def test_loss_equals_the_models_own_loss(family, family_model, tiny_tokenizer):
    """Granite divides logits by logits_scaling, Cohere multiplies by logit_scale, Gemma-2 soft-caps them:
    the loss on trained positions only must still be the model's own loss."""
    from nbfinetune.core.setup import load_base_model

    path = family_model(family)
    model = load_base_model(path, "fp32", "cpu").eval()
    examples = _examples(tiny_tokenizer)
    layout = pick_layout("auto", model)
    with torch.no_grad():
        ours = float(summed_loss(model, collate(examples, "cpu", layout, tiny_tokenizer.pad_token_id)))
        reference = _reference_loss(model, examples)
    assert abs(ours - reference) / reference < 1e-4, (family, layout, ours, reference)


@pytest.mark.train
@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_models_that_refuse_sdpa_load_on_eager_attention_and_train(family, family_model, tmp_path):
    """Gemma-2 (soft-capped attention) and gpt-oss (attention sinks) have no SDPA path: transformers
    treated our attention's old name ("nbft_sdpa") as SDPA and refused to load them."""
    from nbfinetune.core.setup import load_base_model
    from nbfinetune.core.trainer import train

    path = family_model(family)
    model = load_base_model(path, "fp32", "cpu")
    assert model.config._attn_implementation == "eager"
    assert pick_layout("auto", model) == "padded"
    events = []
    result = train(tiny_config(path, max_steps=4, batch_size=4).with_overrides({"eval.generate": False}),
                   lambda type, **p: events.append((type, p)), lambda: False, tmp_path)
    losses = [p["loss"] for t, p in events if t == "step"]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    assert result["steps"] == 4


def test_hybrid_conv_models_never_get_packed_or_shared_rows(family_model, tiny_tokenizer):
    """LFM2's conv layers run along the whole row: packed examples would leak into each other."""
    from nbfinetune.core.setup import load_base_model

    model = load_base_model(family_model("lfm2"), "fp32", "cpu").eval()
    assert pick_layout("auto", model) == "padded"
    examples = _examples(tiny_tokenizer)
    with torch.no_grad():
        padded = float(summed_loss(model, collate(examples, "cpu", "padded", tiny_tokenizer.pad_token_id)))
        reference = _reference_loss(model, examples)
    assert abs(padded - reference) / reference < 1e-4


def test_layout_reads_the_text_config_of_multimodal_models(family_model):
    """Gemma-3 4B+ is Gemma3ForConditionalGeneration: the sliding window is in its text config."""
    from nbfinetune.core.setup import load_base_model

    model = load_base_model(family_model("gemma3"), "fp32", "cpu")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert pick_layout("auto", model) == "padded"


def test_auto_precision_does_not_count_emulated_bf16(monkeypatch):
    """T4/V100 report bf16 support only through emulation (slow, no tensor cores): fp16 there."""
    from nbfinetune.core import setup

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert setup.pick_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert setup.pick_precision("auto", "cuda") == "bf16"
    assert setup.pick_precision("auto", "cpu") == "fp32"


def test_bf16_runs_under_autocast_with_fp32_master_lora_weights(tiny_model, tiny_tokenizer):
    """peft up-casts every adapted layer's input to its fp32 weights (an fp32 copy of each input saved
    for backward); under autocast with that casting off, LoRA matmuls take bf16 inputs."""
    from nbfinetune.config import RunConfig
    from nbfinetune.core.precision import MixedPrecision
    from nbfinetune.core.setup import load_for_training

    config = RunConfig.from_dict({"model": tiny_model, "train": {"precision": "bf16"}})
    loaded = load_for_training(config, tiny_model)
    lora = {n: p for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    seen = []
    layer = next(m for n, m in loaded.model.named_modules() if n.endswith("q_proj.lora_A.default"))
    layer.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    mixed = MixedPrecision.for_run(loaded.precision, loaded.device)
    with mixed.autocast(loaded.model):
        loss = summed_loss(loaded.model, collate(_examples(tiny_tokenizer), "cpu", "shared"))
    mixed.backward(loss)
    assert seen and all(s == (torch.bfloat16, torch.bfloat16) for s in seen)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora.values())
    assert not mixed.scaler.is_enabled()


@pytest.mark.train
def test_fp16_training_scales_the_loss(tiny_model, tmp_path):
    """fp16 without a GradScaler underflows small gradients; the step events report the loss scale."""
    from nbfinetune.core.trainer import train

    events = []
    config = tiny_config(tiny_model, max_steps=3, precision="fp16").with_overrides({"eval.generate": False})
    train(config, lambda type, **p: events.append((type, p)), lambda: False, tmp_path)
    steps = [p for t, p in events if t == "step"]
    assert [p["loss_scale"] for p in steps][0] in (2.0 ** 16, 2.0 ** 15)
    assert all(p["loss"] == p["loss"] for p in steps)


def test_tf32_is_allowed_on_cuda():
    from nbfinetune.core import setup

    before = torch.get_float32_matmul_precision()
    try:
        setup.configure_device("cuda")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_chunked_cross_entropy_never_holds_all_logits_and_matches(family_model, tiny_tokenizer):
    """Logits of at most one chunk of rows exist at a time (recomputed in backward); loss and every
    gradient equal the unchunked computation, with Granite's logit scaling applied in each chunk."""
    from nbfinetune.core import logits as logits_module
    from nbfinetune.core.evaluate import causal_lm_parts
    from nbfinetune.core.setup import load_base_model

    model = load_base_model(family_model("granite"), "fp32", "cpu")
    decoder, head = causal_lm_parts(model)
    batch = collate(_examples(tiny_tokenizer), "cpu", "padded", tiny_tokenizer.pad_token_id)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    keep = batch.targets != IGNORE
    rows_seen = []
    hook = head.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape[0]))
    processing = logits_module.processing_for(model)
    vocab = head.weight.shape[0]

    def loss_and_grads(chunk_elements):
        model.zero_grad()
        h = hidden.detach().requires_grad_()
        loss = logits_module.summed_cross_entropy(h[keep], head, batch.targets[keep], processing, chunk_elements)
        loss.backward()
        return loss.detach(), h.grad, head.weight.grad.clone()

    whole = loss_and_grads(10 ** 9)
    assert rows_seen == [int(keep.sum())]
    rows_seen.clear()
    chunked = loss_and_grads(vocab * 16)
    hook.remove()
    assert max(rows_seen) <= 16 and sum(rows_seen) == 2 * int(keep.sum())  # forward + recompute in backward
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gemma3", "lfm2", "granite"])
def test_each_family_loads_for_training_and_passes_the_output_check(family, family_model):
    from nbfinetune.config import RunConfig
    from nbfinetune.core.setup import load_for_training

    path = family_model(family)
    loaded = load_for_training(RunConfig.from_dict({"model": path}), path)
    assert loaded.trainable_params > 0


def test_unknown_logit_processing_is_caught_at_load(family_model, monkeypatch):
    """A family whose head output is processed in a way we do not mirror must not train on a wrong loss."""
    from nbfinetune.core import logits
    from nbfinetune.core.setup import load_base_model

    model = load_base_model(family_model("granite"), "fp32", "cpu")
    monkeypatch.setattr(logits, "processing_for", lambda model: logits.LogitProcessing())
    with pytest.raises(logits.UnknownLogitProcessing, match="GraniteForCausalLM"):
        logits.check_output_path(model, model.get_decoder(), model.get_output_embeddings())
