#!/usr/bin/env python
"""Tiny random-weight GGUF files of the GGUF seed models' architectures, written with `gguf` (llama.cpp's writer).

- `mpt`: MPT (the airoboros-mpt-30b seed): fused QKV, LayerNorm with bias, ALiBi, GELU MLP, GPT-NeoX-style
  byte-level BPE vocabulary; F16 weights.
- `mixtral`: llama architecture with 8 experts, 2 active per token (the bagel-8x7b seed); SentencePiece vocab;
  Q8_0 weights (quantised here by gguf.quants).
- `llama2-rope`: Llama-2 with linear RoPE scaling x2 and an 8192 context (the airophin seed), F32 weights;
  `rope=False` writes the same weights without the RoPE-scaling keys (to show the file's keys are what counts).

Attention weights are scaled up (`ATTN_GAIN`) so that scores, and with them positions and RoPE, visibly change
the logits of a 2-layer random model; otherwise attention is near uniform and RoPE barely matters.

Usage: python scripts/make_tiny_gguf.py mpt|mixtral|llama2-rope OUT.gguf [--name NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

EMBD, HEADS, FF, LAYERS = 64, 4, 128, 2
ATTN_GAIN = 4.0
WORDS = ("the", "and", "of", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "river",
         "valley", "source", "answer", "input", "context", "date", "url", "blue", "green", "berries")


def _gguf():  # type: ignore[no-untyped-def]
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - a dev dependency
        raise SystemExit(f"the gguf package is needed: pip install gguf ({exc})") from exc
    return gguf


# --- vocabularies --------------------------------------------------------------------------------------------


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style ("llama") vocabulary: <unk> <s> </s>, 256 byte-fallback tokens, characters and words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    # Every prefix of "▁word" too: SentencePiece merges two adjacent pieces only into a piece in the vocabulary.
    words = list(dict.fromkeys("\u2581" + w[:k] for w in WORDS for k in range(1, len(w) + 1)))
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)] + words
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = [], 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    chars = [table[b] for b in range(256)]
    return chars


def bpe_vocab() -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE ("gpt2") vocabulary: <|endoftext|>, all 256 byte symbols, a few merges for common words."""
    chars = _byte_chars()
    tokens = ["<|endoftext|>"] + chars
    types = [3] + [1] * 256
    merges: list[str] = []
    for w in WORDS:
        word = "\u0120" + w  # Ġ = a leading space
        cur = word[0]
        for ch in word[1:]:
            merged = cur + ch
            if merged not in tokens:
                merges.append(f"{cur} {ch}")
                tokens.append(merged)
                types.append(1)
            cur = merged
    return tokens, types, merges


# --- weights -----------------------------------------------------------------------------------------------------


def _rand(rng: np.random.Generator, *shape: int, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _writer(path: Path, arch: str, name: str, n_ctx: int) -> object:
    gguf = _gguf()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(EMBD)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    return w


def _finish(w: object) -> None:
    w.write_header_to_file()  # type: ignore[attr-defined]
    w.write_kv_data_to_file()  # type: ignore[attr-defined]
    w.write_tensors_to_file()  # type: ignore[attr-defined]
    w.close()  # type: ignore[attr-defined]


def _spm_tokenizer(w: object) -> int:
    tokens, scores, types = spm_vocab()
    w.add_tokenizer_model("llama")  # type: ignore[attr-defined]
    w.add_token_list(tokens)  # type: ignore[attr-defined]
    w.add_token_scores(scores)  # type: ignore[attr-defined]
    w.add_token_types(types)  # type: ignore[attr-defined]
    w.add_unk_token_id(0)  # type: ignore[attr-defined]
    w.add_bos_token_id(1)  # type: ignore[attr-defined]
    w.add_eos_token_id(2)  # type: ignore[attr-defined]
    w.add_add_bos_token(True)  # type: ignore[attr-defined]
    return len(tokens)


def build_llama(path: Path, *, name: str, experts: int = 0, experts_used: int = 0, n_ctx: int = 4096,
                rope_factor: float | None = None, quant: str = "F32", seed: int = 0) -> Path:
    """A 2-layer llama-architecture GGUF (Mixtral-style MoE when `experts`)."""
    gguf = _gguf()
    rng = np.random.default_rng(seed)
    w = _writer(path, "llama", name, n_ctx)
    head_dim = EMBD // HEADS
    w.add_head_count_kv(HEADS)  # type: ignore[attr-defined]
    w.add_layer_norm_rms_eps(1e-5)  # type: ignore[attr-defined]
    w.add_rope_dimension_count(head_dim)  # type: ignore[attr-defined]
    w.add_rope_freq_base(10000.0)  # type: ignore[attr-defined]
    if rope_factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)  # type: ignore[attr-defined]
        w.add_rope_scaling_factor(rope_factor)  # type: ignore[attr-defined]
        w.add_rope_scaling_orig_ctx_len(int(n_ctx / rope_factor))  # type: ignore[attr-defined]
    if experts:
        w.add_expert_count(experts)  # type: ignore[attr-defined]
        w.add_expert_used_count(experts_used)  # type: ignore[attr-defined]
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,  # type: ignore[attr-defined]
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    vocab = _spm_tokenizer(w)

    def add(name_: str, data: np.ndarray, q: bool = True) -> None:
        if not q or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name_, data)  # type: ignore[attr-defined]
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name_, data.astype(np.float16))  # type: ignore[attr-defined]
        else:
            w.add_tensor(name_, gguf.quants.quantize(data, qtype), raw_dtype=qtype)  # type: ignore[attr-defined]

    add("token_embd.weight", _rand(rng, vocab, EMBD, std=1.0))
    add("output_norm.weight", np.ones(EMBD, dtype=np.float32), q=False)
    add("output.weight", _rand(rng, vocab, EMBD, std=EMBD**-0.5))
    for i in range(LAYERS):
        b = f"blk.{i}"
        add(f"{b}.attn_norm.weight", np.ones(EMBD, dtype=np.float32), q=False)
        add(f"{b}.attn_q.weight", _rand(rng, EMBD, EMBD, std=ATTN_GAIN * EMBD**-0.5))
        add(f"{b}.attn_k.weight", _rand(rng, EMBD, EMBD, std=ATTN_GAIN * EMBD**-0.5))
        add(f"{b}.attn_v.weight", _rand(rng, EMBD, EMBD, std=EMBD**-0.5))
        add(f"{b}.attn_output.weight", _rand(rng, EMBD, EMBD, std=EMBD**-0.5))
        add(f"{b}.ffn_norm.weight", np.ones(EMBD, dtype=np.float32), q=False)
        if experts:
            add(f"{b}.ffn_gate_inp.weight", _rand(rng, experts, EMBD, std=1.0), q=False)
            add(f"{b}.ffn_gate_exps.weight", _rand(rng, experts, FF, EMBD, std=EMBD**-0.5))
            add(f"{b}.ffn_up_exps.weight", _rand(rng, experts, FF, EMBD, std=EMBD**-0.5))
            add(f"{b}.ffn_down_exps.weight", _rand(rng, experts, EMBD, FF, std=FF**-0.5))
        else:
            add(f"{b}.ffn_gate.weight", _rand(rng, FF, EMBD, std=EMBD**-0.5))
            add(f"{b}.ffn_up.weight", _rand(rng, FF, EMBD, std=EMBD**-0.5))
            add(f"{b}.ffn_down.weight", _rand(rng, EMBD, FF, std=FF**-0.5))
    _finish(w)
    return path


def build_mpt(path: Path, *, name: str, n_ctx: int = 2048, seed: int = 0) -> Path:
    """A 2-layer MPT GGUF with F16 weights (ALiBi, no RoPE)."""
    gguf = _gguf()
    rng = np.random.default_rng(seed)
    w = _writer(path, "mpt", name, n_ctx)
    w.add_layer_norm_eps(1e-5)  # type: ignore[attr-defined]
    w.add_max_alibi_bias(8.0)  # type: ignore[attr-defined]
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)  # type: ignore[attr-defined]
    tokens, types, merges = bpe_vocab()
    w.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
    w.add_tokenizer_pre("mpt")  # type: ignore[attr-defined]
    w.add_token_list(tokens)  # type: ignore[attr-defined]
    w.add_token_types(types)  # type: ignore[attr-defined]
    w.add_token_merges(merges)  # type: ignore[attr-defined]
    w.add_bos_token_id(0)  # type: ignore[attr-defined]
    w.add_eos_token_id(0)  # type: ignore[attr-defined]
    w.add_add_bos_token(False)  # type: ignore[attr-defined]
    vocab = len(tokens)

    def f16(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16)

    w.add_tensor("token_embd.weight", f16(_rand(rng, vocab, EMBD, std=1.0)))  # type: ignore[attr-defined]
    w.add_tensor("output_norm.weight", np.ones(EMBD, dtype=np.float32))  # type: ignore[attr-defined]
    w.add_tensor("output_norm.bias", np.zeros(EMBD, dtype=np.float32))  # type: ignore[attr-defined]
    for i in range(LAYERS):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", np.ones(EMBD, dtype=np.float32))  # type: ignore[attr-defined]
        w.add_tensor(f"{b}.attn_norm.bias", np.zeros(EMBD, dtype=np.float32))  # type: ignore[attr-defined]
        qkv = np.concatenate([_rand(rng, EMBD, EMBD, std=ATTN_GAIN * EMBD**-0.5) for _ in range(2)]
                             + [_rand(rng, EMBD, EMBD, std=EMBD**-0.5)])
        w.add_tensor(f"{b}.attn_qkv.weight", f16(qkv))  # type: ignore[attr-defined]
        w.add_tensor(f"{b}.attn_output.weight", f16(_rand(rng, EMBD, EMBD, std=EMBD**-0.5)))  # type: ignore[attr-defined]
        w.add_tensor(f"{b}.ffn_norm.weight", np.ones(EMBD, dtype=np.float32))  # type: ignore[attr-defined]
        w.add_tensor(f"{b}.ffn_norm.bias", np.zeros(EMBD, dtype=np.float32))  # type: ignore[attr-defined]
        w.add_tensor(f"{b}.ffn_up.weight", f16(_rand(rng, FF, EMBD, std=EMBD**-0.5)))  # type: ignore[attr-defined]
        w.add_tensor(f"{b}.ffn_down.weight", f16(_rand(rng, EMBD, FF, std=FF**-0.5)))  # type: ignore[attr-defined]
    _finish(w)
    return path


SEEDS = {
    # kind -> (builder, default general.name): the names the seed models' GGUFs carry
    "mpt": (lambda p, name: build_mpt(p, name=name), "airoboros-mpt-30b-gpt4-1p4-five-epochs"),
    "mixtral": (lambda p, name: build_llama(p, name=name, experts=8, experts_used=2, n_ctx=32768, quant="Q8_0"),
                "bagel-dpo-8x7b-v0.2"),
    "llama2-rope": (lambda p, name: build_llama(p, name=name, n_ctx=8192, rope_factor=2.0), "airophin-v2-13b-PI-8k"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=sorted(SEEDS))
    p.add_argument("out", type=Path)
    p.add_argument("--name", default=None, help="general.name (default: the seed model's)")
    a = p.parse_args(argv)
    build, default_name = SEEDS[a.kind]
    build(a.out, a.name or default_name)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
