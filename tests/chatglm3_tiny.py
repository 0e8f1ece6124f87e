"""Builds a tiny random ChatGLM3 checkpoint folder in the published file layout, deterministically.

``config.json`` (model_type chatglm), ``pytorch_model-0000N-of-0000M.bin`` shards with their index,
``tokenizer.model`` (a SentencePiece model trained on the spot) and ``tokenizer_config.json``.
Only torch and sentencepiece are needed, so the same folder can be rebuilt in the scratch environment
that runs the reference implementation (see tests/data/chatglm3_reference.json).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

SPECIAL_TOKENS = 9  # [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>

_CORPUS_LINES = [
    "Hello, how are you today? I am fine, thank you.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "北京是中国的首都。上海是一个大城市。",
    "Emoji are fun: 😀 🎉 👍 and so are flags 🇫🇷.",
    "What is the weather like in Beijing? It is sunny and warm.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Machine learning models turn text into tokens and tokens into text.",
    "A quick brown fox jumps over the lazy dog.",
]


def train_tokenizer(vocab_size: int = 600) -> bytes:
    """A byte-fallback BPE SentencePiece model, like ChatGLM3's, trained on a fixed small corpus."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS_LINES * 20), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
        split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return model.getvalue()


def tiny_config(sp_vocab: int, *, rope_ratio: float | None = None, layers: int = 2) -> dict:
    padded = -(-(sp_vocab + SPECIAL_TOKENS) // 64) * 64 + 64  # padding rows past the special tokens
    config = {
        "_name_or_path": "tiny-chatglm3", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 96,
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64, "kv_channels": 16,
        "layernorm_epsilon": 1e-05, "multi_query_attention": True, "multi_query_group_num": 2,
        "num_attention_heads": 4, "num_layers": layers, "original_rope": True, "padded_vocab_size": padded,
        "post_layer_norm": True, "rmsnorm": True, "seq_length": 256, "use_cache": True, "torch_dtype": "float32",
        "transformers_version": "4.30.2", "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }
    if rope_ratio is not None:
        config["rope_ratio"] = rope_ratio
    return config


def tiny_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with ChatGLM3's names and shapes (fused q/k/v, fused gate/up)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 0.08) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    hidden, heads, head_dim = config["hidden_size"], config["num_attention_heads"], config["kv_channels"]
    groups, ffn, vocab = config["multi_query_group_num"], config["ffn_hidden_size"], config["padded_vocab_size"]
    qkv_rows = heads * head_dim + 2 * groups * head_dim
    rotary = head_dim // 2
    state = {"transformer.embedding.word_embeddings.weight": randn(vocab, hidden, scale=0.5)}
    state["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))
    for n in range(config["num_layers"]):
        prefix = f"transformer.encoder.layers.{n}."
        state[prefix + "input_layernorm.weight"] = 1.0 + randn(hidden, scale=0.1)
        state[prefix + "self_attention.query_key_value.weight"] = randn(qkv_rows, hidden)
        state[prefix + "self_attention.query_key_value.bias"] = randn(qkv_rows, scale=0.05)
        state[prefix + "self_attention.dense.weight"] = randn(hidden, heads * head_dim)
        state[prefix + "post_attention_layernorm.weight"] = 1.0 + randn(hidden, scale=0.1)
        state[prefix + "mlp.dense_h_to_4h.weight"] = randn(2 * ffn, hidden)
        state[prefix + "mlp.dense_4h_to_h.weight"] = randn(hidden, ffn)
    state["transformer.encoder.final_layernorm.weight"] = 1.0 + randn(hidden, scale=0.1)
    state["transformer.output_layer.weight"] = randn(vocab, hidden, scale=0.5)
    return state


def build_tiny_chatglm3(folder: Path, *, rope_ratio: float | None = None, shards: int = 2, seed: int = 0) -> Path:
    """Write the whole checkpoint folder; returns it."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    sp_model = train_tokenizer()
    (folder / "tokenizer.model").write_bytes(sp_model)
    sp_vocab = spm.SentencePieceProcessor(model_proto=sp_model).vocab_size()
    config = tiny_config(sp_vocab, rope_ratio=rope_ratio)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "remove_space": False, "do_lower_case": False, "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}, indent=2))
    state = tiny_state_dict(config, seed)
    names = list(state)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index in range(shards):
        filename = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[index * per_shard:(index + 1) * per_shard]}
        torch.save(part, folder / filename)
        weight_map.update({name: filename for name in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder
