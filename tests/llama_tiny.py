"""Builds a tiny random Llama checkpoint folder with the embedded model's tokenizer and chat template: the
embedded model's architecture at two layers and a width of 64, so that what scales with the model's size
(compiling it, above all) takes seconds. Its answers are noise; tests compare it with itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

from llm_api.local_model.cache import cached_build
from llm_api.local_model.loader import _converted_gguf_cache
from llm_api.local_model.spec import embedded_gguf_path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def build_tiny_llama(folder: Path, cache_dir: Path) -> Path:
    """The folder (made once): config, random weights (seeded) and the embedded model's tokenizer files. Built
    as the app builds its caches, so that ``make test``'s other worker waits for it and then finds all of it."""
    if (folder / "model.safetensors").is_file():  # also a folder built before it had cached_build's marker
        return folder
    embedded = _converted_gguf_cache(embedded_gguf_path(), cache_dir)

    def build(scratch: Path) -> None:
        config = transformers.AutoConfig.from_pretrained(embedded, local_files_only=True)
        config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(scratch)
        for name in _TOKENIZER_FILES:
            if (embedded / name).is_file():
                shutil.copy(embedded / name, scratch / name)

    return cached_build(folder, build, {"contents": "a tiny random Llama for the tests"})
