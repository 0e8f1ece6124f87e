"""Shared by the two Python baselines: load the same weights as the service (fp32 safetensors)."""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = os.environ["LLM_API_BENCH_MODEL_DIR"]  # the service's converted copy of the embedded GGUF

tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, local_files_only=True).eval()


def generate_kwargs(body: dict, streamer: object) -> dict:
    """OpenAI-shaped body → ``model.generate`` arguments (``ignore_eos`` → exactly ``max_tokens``)."""
    ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    max_tokens = int(body.get("max_tokens", 128))
    temperature = float(body.get("temperature", 1.0))
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_tokens,
              "streamer": streamer, "do_sample": temperature > 0, "top_k": None}
    if temperature > 0:
        kwargs["temperature"] = temperature
    if body.get("ignore_eos"):
        kwargs["min_new_tokens"] = max_tokens
    return kwargs


def chunk(text: str) -> str:
    import json

    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + "\n\n"
