"""A tiny chat model built from a config, for tests and smoke runs: seconds, not minutes, and offline.

Its byte-level BPE tokenizer is trained here on the shipped sample data and uses a ChatML template,
so the whole path (template, masking, EOS, LoRA, generation) is exercised for real.

    python -m nbfinetune.testing DIR     # writes the model to DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    from .data.sources import sample_files

    texts: list[str] = []
    for path in sample_files("people"):
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts + ["system", "user", "assistant", "Hello! How can I help you today?"]


def make_tiny_model(directory: str | Path, layers: int = 2, hidden: int = 64, vocab: int = 600,
                    seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None, unk_token=None)
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return _save(model, tokenizer, directory)


# Small shapes for each architecture family whose quirks the trainer must respect (logit scaling,
# soft-capping, attention sinks, conv/SSM layers, multimodal wrappers).
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "granite": ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0,
                                  "residual_multiplier": 0.5, "attention_multiplier": 0.25}),
    "cohere": ("CohereConfig", {"logit_scale": 0.25}),
    "gemma2": ("Gemma2Config", {"final_logit_softcapping": 2.0, "attn_logit_softcapping": 5.0,
                                "sliding_window": 8, "head_dim": 16}),
    "gpt_oss": ("GptOssConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                                 "head_dim": 16}),
    "lfm2": ("Lfm2Config", {"layer_types": ["conv", "full_attention"], "block_dim": 64, "block_ff_dim": 128}),
}


def tiny_family_config(family: str, vocab: int, layers: int = 2, hidden: int = 64) -> PretrainedConfig:
    import transformers

    if family == "gemma3":  # Gemma3ForConditionalGeneration: the text settings live in text_config
        text = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": hidden * 2,
                "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "sliding_window": 8}
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
        return transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    name, extra = FAMILIES[family]
    common: dict[str, Any] = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": hidden * 2,
                              "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "max_position_embeddings": 1024}
    return getattr(transformers, name)(**(common | extra))


def make_tiny_family_model(directory: str | Path, family: str, tokenizer_from: str | Path,
                           seed: int = 0) -> Path:
    """A tiny random model of `family` that shares the tiny Llama's tokenizer (see make_tiny_model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = tiny_family_config(family, len(tokenizer))
    for c in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        c.eos_token_id, c.pad_token_id, c.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return _save(model, tokenizer, directory)


def _save(model, tokenizer, directory: Path) -> Path:
    """Generation stops at the tokenizer's end of turn and pads with its pad token, as a real chat model's
    does."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    print(make_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-model"))
