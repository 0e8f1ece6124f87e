"""ChatGLM3 checkpoints on transformers' native ``GlmForCausalLM``, without the checkpoint's remote code.

A published ChatGLM3 folder (``config.json`` with ``model_type: chatglm``, ``pytorch_model-*.bin`` or
``*.safetensors`` shards, ``tokenizer.model``) is converted once, shard by shard, into the native
layout and cached (keyed by the source files); the tokenizer is the plain SentencePiece model plus
ChatGLM3's nine special tokens, with the ids the reference assigns.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .cache import cached_build, content_key
from .errors import ModelLoadError
from .prompts import CHATGLM3_SPECIAL_TOKENS
from .spec import read_config

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
# Architecture switches the native GLM implementation assumes; other values are not converted.
_IMPLIED = {"add_bias_linear": False, "rmsnorm": True, "post_layer_norm": True,
            "apply_residual_connection_post_layernorm": False, "original_rope": True}
_REQUIRED = ("padded_vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads",
             "kv_channels", "seq_length", "layernorm_epsilon")


class ChatGLM3Tokenizer:
    """SentencePiece plus ChatGLM3's special tokens (ids ``vocab_size() + index``)."""

    chat_template = None

    def __init__(self, model_file: str | Path) -> None:
        from sentencepiece import SentencePieceProcessor

        self.sp = SentencePieceProcessor(model_file=str(model_file))
        base = self.sp.vocab_size()
        self.special_ids = {name: base + i for i, name in enumerate(CHATGLM3_SPECIAL_TOKENS)}
        self._special_names = {i: name for name, i in self.special_ids.items()}
        self.n_words = base + len(CHATGLM3_SPECIAL_TOKENS)
        self.eos_token_id = self.sp.eos_id()
        self.pad_token_id = self.sp.unk_id()

    def __len__(self) -> int:
        return self.n_words

    def grammar_vocabulary(self) -> list[str]:
        """Each id's SentencePiece piece ("▁" for a space, "<0x0A>" for a byte) for constrained decoding;
        control and special tokens are empty, so a grammar never admits them as text."""
        sp = self.sp
        pieces = ["" if sp.is_control(i) or sp.is_unknown(i) else sp.id_to_piece(i) for i in range(sp.vocab_size())]
        return pieces + [""] * len(self.special_ids)

    def encode(self, text: str) -> list[int]:
        """Plain SentencePiece ids (with its dummy-prefix "▁"), as the reference encodes each segment."""
        ids: list[int] = self.sp.encode(text)
        return ids

    def __call__(self, text: str) -> dict[str, list[int]]:
        """Raw text (``/v1/completions``): ``[gMASK] sop`` + text, as the reference tokenizer prefixes it."""
        return {"input_ids": [self.special_ids["[gMASK]"], self.special_ids["sop"], *self.encode(text)]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Runs of ordinary ids through SentencePiece; special tokens literally (or skipped);
        padding-row ids (past the special tokens) are dropped."""
        text, run = "", []
        for token in ids:
            if token < self.sp.vocab_size():
                run.append(token)
                continue
            if run:
                text, run = text + self.sp.decode(run), []
            if token in self._special_names and not skip_special_tokens:
                text += self._special_names[token]
        return text + (self.sp.decode(run) if run else "")


def glm_config(source: dict[str, Any], special_ids: dict[str, int]) -> dict[str, Any]:
    """ChatGLM3 ``config.json`` → ``GlmConfig`` arguments; raises naming what is not recognised."""
    problems = [f"{k} missing" for k in _REQUIRED if k not in source]
    problems += [f"{k}={source[k]!r} (expected {v!r})" for k, v in _IMPLIED.items() if k in source and source[k] != v]
    if problems:
        raise ModelLoadError("this ChatGLM checkpoint is not one the converter recognises: " + ", ".join(problems)
                             + "; set LLM_API_TRUST_REMOTE_CODE=1 to run its own code instead")
    heads = source["num_attention_heads"]
    groups = source.get("multi_query_group_num", heads) if source.get("multi_query_attention") else heads
    rope_ratio = float(source.get("rope_ratio") or 1.0)
    return {
        "vocab_size": source["padded_vocab_size"], "hidden_size": source["hidden_size"],
        "intermediate_size": source["ffn_hidden_size"], "num_hidden_layers": source["num_layers"],
        "num_attention_heads": heads, "num_key_value_heads": groups, "head_dim": source["kv_channels"],
        "max_position_embeddings": source["seq_length"], "rms_norm_eps": source["layernorm_epsilon"],
        "attention_bias": bool(source.get("add_qkv_bias", True)), "hidden_act": "silu",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0 * rope_ratio,
                            "partial_rotary_factor": 0.5},
        "eos_token_id": [source.get("eos_token_id", 2), special_ids["<|user|>"], special_ids["<|observation|>"]],
        "pad_token_id": source.get("pad_token_id", 0), "tie_word_embeddings": False,
    }


def convert_tensors(name: str, tensor: torch.Tensor, config: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """One ChatGLM3 tensor → its native ``GlmForCausalLM`` tensor(s)."""
    if name == "transformer.embedding.word_embeddings.weight":
        return [("model.embed_tokens.weight", tensor)]
    if name == "transformer.encoder.final_layernorm.weight":
        return [("model.norm.weight", tensor)]
    if name == "transformer.output_layer.weight":
        return [("lm_head.weight", tensor)]
    if name == "transformer.rotary_pos_emb.inv_freq":
        return []  # recomputed from rope_theta
    prefix = "transformer.encoder.layers."
    if not name.startswith(prefix):
        raise ModelLoadError(f"unexpected tensor in the ChatGLM3 checkpoint: {name}")
    layer, _, rest = name[len(prefix):].partition(".")
    target = f"model.layers.{layer}."
    simple = {"input_layernorm.weight": "input_layernorm.weight",
              "post_attention_layernorm.weight": "post_attention_layernorm.weight",
              "self_attention.dense.weight": "self_attn.o_proj.weight",
              "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
              "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight"}
    if rest in simple:
        return [(target + simple[rest], tensor)]
    if rest.startswith("self_attention.query_key_value."):
        kind = rest.rsplit(".", 1)[1]  # weight | bias
        q_rows = config["num_attention_heads"] * config["head_dim"]
        kv_rows = config["num_key_value_heads"] * config["head_dim"]
        q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
        return [(f"{target}self_attn.{p}_proj.{kind}", t.contiguous()) for p, t in (("q", q), ("k", k), ("v", v))]
    raise ModelLoadError(f"unexpected tensor in the ChatGLM3 checkpoint: {name}")


def source_shards(folder: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise ModelLoadError(f"{folder} has no *.safetensors or pytorch_model*.bin weight files")


def _read_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as shard:
            for name in shard.keys():
                yield name, shard.get_tensor(name)
    else:
        yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()


def check_recognised(folder: Path) -> None:
    """What can be checked without converting: files present, config recognised."""
    if not (folder / "tokenizer.model").is_file():
        raise ModelLoadError(f"{folder} has no tokenizer.model; set LLM_API_TRUST_REMOTE_CODE=1 to run its own code")
    source_shards(folder)
    glm_config(read_config(folder), {n: i for i, n in enumerate(CHATGLM3_SPECIAL_TOKENS)})


def cache_key(folder: Path, cache_dir: Path) -> str:
    """Keyed by the source files' content and the converter's version."""
    sources = [folder / "config.json", folder / "tokenizer.model", *source_shards(folder)]
    return content_key(sources, cache_dir, f"converter {CONVERTER_VERSION}")


def converted_folder(folder: Path, cache_dir: Path) -> Path:
    """Convert once into ``cache_dir`` (shard by shard: never two copies of the model in memory)."""
    from transformers import GlmConfig

    tokenizer = ChatGLM3Tokenizer(folder / "tokenizer.model")
    config = glm_config(read_config(folder), tokenizer.special_ids)

    def build(scratch: Path) -> None:
        log.info("converting ChatGLM3 checkpoint %s (first start only)", folder)
        shards, weight_map, total = source_shards(folder), {}, 0
        for index, shard in enumerate(shards, start=1):
            converted = {new: tensor for name, tensor in _read_shard(shard) for new, tensor in
                         convert_tensors(name, tensor, config)}
            filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            save_file(converted, str(scratch / filename), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(converted, filename))
            total += sum(t.numel() * t.element_size() for t in converted.values())
            del converted
        (scratch / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}))
        GlmConfig(**config, architectures=["GlmForCausalLM"]).save_pretrained(scratch)
        shutil.copy(folder / "tokenizer.model", scratch / "tokenizer.model")

    target = cache_dir / f"chatglm3-native-{folder.name}-{cache_key(folder, cache_dir)}"
    return cached_build(target, build, {"source": str(folder), "converter": CONVERTER_VERSION})
