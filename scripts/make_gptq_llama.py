#!/usr/bin/env python
"""Build a small GPTQ-format Llama checkpoint with random weights, for testing the ExLlamaV2 backend.

The output directory looks like a real AutoGPTQ export (what the airoboros GPTQ repos ship):
- config.json: LlamaForCausalLM + quantization_config {quant_method: gptq, bits: 4, group_size, desc_act, sym};
- quantize_config.json (ExLlamaV2 ignores it; other loaders read it);
- model.safetensors: fp16 embed_tokens / norms / lm_head; every q/k/v/o/gate/up/down projection as GPTQ
  `qweight` int32 [in/8, out], `qzeros` int32 [groups, out/8], `scales` fp16 [groups, out], `g_idx` int32 [in];
- tokenizer.json (byte-level BPE trained here, <unk>/<s>/</s> = 0/1/2) + tokenizer_config.json.

Quantization is round-to-nearest per group in GPTQ's *storage* convention (no Hessian, the weights are random
anyway): the format is what the backend has to get right.
- 4-bit values packed 8 per int32, least significant nibble first: qweight[r, o] holds rows 8r..8r+7.
- AutoGPTQ "v1" zero points: stored as (zero - 1), packed 8 per int32 along the output dimension. ExLlamaV2
  adds the 1 back (checkpoint_format "gptq_v2" would store the zero itself). Zero 0 is therefore unencodable
  and is clamped to 1 (symmetric quantization always uses zero 8).
- w = scale[g] * (q - zero[g]) with g = g_idx[input row]. Without act-order g_idx[i] = i // group_size; with
  act-order (desc_act) the rows are grouped in a permuted order, so g_idx is a shuffled sequence in which every
  group still has exactly group_size rows, while qweight keeps the original row order.

--dump-reference also writes reference.safetensors: the fp16 weights ([out, in], HF layout) that were
quantized, so tests can check dequantization against them.

Usage: python scripts/make_gptq_llama.py --out DIR [--hidden 512] [--layers 2] [--group-size 128] [--act-order]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROJECTIONS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}

# A few KB of text for the BPE merges; the airoboros prompt vocabulary is included so it tokenizes compactly.
_CORPUS = """\
A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, uncensored
responses to the user's input. USER: What color are blueberries? Source? ASSISTANT: Blueberries are now green.
BEGININPUT
BEGINCONTEXT
date: 2021-01-01
url: https://web.site/123
author: Jane Doe
title: The state of the berry harvest
ENDCONTEXT
In a shocking turn of events, blueberries are now green, but will be sticking with the same name.
ENDINPUT
BEGININSTRUCTION
What color are bluberries? Source? Don't make up answers if you don't know. Cite your sources.
ENDINSTRUCTION
Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction:
Summarize the input in around 130 words.
### Response:
The report describes the harvest, the weather and the prices of the season, and it names its sources.
Reference(s):
Once upon a time there was a small village by the sea. The people of the village were fishermen and farmers.
Every morning the boats went out before the sun rose, and every evening they came back with the catch of the
day. The children ran along the beach and the old men sat in the shade of the trees, talking about the weather,
the markets in the town, and the stories of the years gone by. In the spring the fields were green and in the
autumn they were golden with wheat. The river that crossed the valley was clear and cold; it came down from the
mountains where the snow stayed until the middle of the summer.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick daft
zebras jump! Sphinx of black quartz, judge my vow. The five boxing wizards jump quickly.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2020 2021 2022 2023 2024 3.14 2.71 42 -1 +1 50% $20 #1 @home
Python code: def main(argv: list[str]) -> int: return 0  # comment; for i in range(10): print(i, i * i)
JSON: {"key": "value", "list": [1, 2, 3], "nested": {"a": true, "b": null}}
Science: Water boils at one hundred degrees Celsius at sea level. The speed of light is about three hundred
thousand kilometres per second. The Earth orbits the Sun once a year and the Moon orbits the Earth once a month.
History: The printing press changed how people shared knowledge; libraries, universities and newspapers grew.
Questions and answers: Who wrote the report? When was it published? Where did it happen? Why does it matter?
The answer is yes. The answer is no. I do not know. According to the input, the value is unknown.
"""


# --- tokenizer ------------------------------------------------------------------------------------------------


def build_tokenizer(vocab_size: int) -> Any:
    """Byte-level BPE (every byte is a token, so any text round-trips) with Llama's special-token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    # A small corpus may run out of merges: pad with reserved special tokens so the vocab has the exact size
    # (a multiple of 32, like real models; lm_head rows beyond the tokenizer would decode to nothing).
    n = tok.get_vocab_size()
    if n < vocab_size:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(vocab_size - n)])
    # HF-style: encode(add_special_tokens=True) prepends <s> like Llama's tokenizer (ExLlamaV2 adds BOS itself).
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    assert tok.token_to_id("<unk>") == 0 and tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok


def tokenizer_config(max_len: int) -> dict[str, Any]:
    special = {"<unk>": 0, "<s>": 1, "</s>": 2}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
            for s, i in special.items()
        },
    }


# --- GPTQ quantization and packing ----------------------------------------------------------------------------


def make_g_idx(in_features: int, group_size: int, act_order: bool, gen: torch.Generator) -> torch.Tensor:
    gs = in_features if group_size == -1 else group_size
    if not act_order:
        return (torch.arange(in_features) // gs).to(torch.int32)
    # desc_act: GPTQ visits input rows in a permuted order (by Hessian diagonal) and closes a group every
    # `gs` visited rows; g_idx[row] = position of the row in that order // gs.
    perm = torch.randperm(in_features, generator=gen)
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[perm] = (torch.arange(in_features) // gs).to(torch.int32)
    return g_idx


def quantize(weight: torch.Tensor, g_idx: torch.Tensor, sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN 4-bit per (group, output column). weight: [out, in] fp16. Returns q [in, out] (0..15), zeros
    [groups, out] (1..15, the true zero point) and scales [groups, out] fp16.

    Vectorised over groups: every group has the same number of rows (make_g_idx), so the rows sorted by group
    form a [groups, rows per group, out] block (a 7B layer quantises in about a second)."""
    w = weight.float().t().contiguous()  # [in, out]: GPTQ stores input rows (contiguous: rows are gathered)
    groups = int(g_idx.max()) + 1
    order = torch.argsort(g_idx.long(), stable=True)
    wg = w[order].reshape(groups, -1, w.shape[1])  # [groups, rows, out]
    maxq = 15
    xmin = torch.clamp(wg.amin(1), max=0.0)
    xmax = torch.clamp(wg.amax(1), min=0.0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(empty, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    # Store the scale in fp16 rounded *up*, so the clamp below never costs more than half a step.
    # (fp16 has a relative spacing <= 2**-10, so scale * (1 + 2**-10) rounds to a value >= scale.)
    s16 = scale.half()
    s16 = torch.where(s16.float() < scale, (scale * (1 + 2**-10)).half(), s16)
    sf = s16.float()
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / sf)
    zero = zero.clamp(1, maxq).to(torch.int64)  # v1 stores zero - 1: zero 0 cannot be encoded
    qg = torch.clamp(torch.round(wg / sf[:, None]) + zero[:, None], 0, maxq).to(torch.int64)
    q = torch.empty_like(w, dtype=torch.int64)
    q[order] = qg.reshape(-1, w.shape[1])
    return q, zero, s16


def pack_rows(q: torch.Tensor) -> torch.Tensor:
    """[in, out] nibbles -> int32 [in/8, out]: row 8r+j goes to bits 4j..4j+3 of qweight[r]."""
    a = q.numpy().astype(np.uint32)
    packed = np.zeros((a.shape[0] // 8, a.shape[1]), dtype=np.uint32)
    for j in range(8):
        packed |= a[j::8] << np.uint32(4 * j)
    return torch.from_numpy(packed.view(np.int32))


def pack_cols(z: torch.Tensor) -> torch.Tensor:
    """[groups, out] nibbles -> int32 [groups, out/8]: column 8c+j goes to bits 4j..4j+3 of qzeros[:, c]."""
    a = z.numpy().astype(np.uint32)
    packed = np.zeros((a.shape[0], a.shape[1] // 8), dtype=np.uint32)
    for j in range(8):
        packed |= a[:, j::8] << np.uint32(4 * j)
    return torch.from_numpy(packed.view(np.int32))


def gptq_tensors(weight: torch.Tensor, group_size: int, act_order: bool, sym: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out_features, in_features = weight.shape
    g_idx = make_g_idx(in_features, group_size, act_order, gen)
    q, zeros, scales = quantize(weight, g_idx, sym)
    return {
        "qweight": pack_rows(q),
        "qzeros": pack_cols((zeros - 1) & 0xF),
        "scales": scales,
        "g_idx": g_idx,
    }


# --- the checkpoint -------------------------------------------------------------------------------------------


def build_checkpoint(
    out: Path,
    *,
    hidden: int = 512,
    layers: int = 2,
    heads: int = 8,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    vocab: int = 512,
    group_size: int = 128,
    act_order: bool = False,
    sym: bool = True,
    max_position: int = 2048,
    rope_scale: float | None = None,
    seed: int = 0,
    dump_reference: bool = False,
    attn_gain: float = 1.0,
) -> dict[str, Any]:
    """Write the checkpoint to `out` and return its config.json dict.

    `attn_gain` scales the q/k projections: attention scores grow by its square. With the default 1 a random
    model's attention is near uniform and positions (RoPE) barely change its logits; 2 makes them matter.
    """
    from safetensors.torch import save_file

    kv_heads = kv_heads or heads
    if group_size not in (-1, 32, 64, 128):
        raise ValueError("group_size must be 32, 64, 128 or -1 (ExLlamaV2 infers power-of-two group sizes)")
    if hidden % heads or heads % kv_heads or vocab % 32:
        raise ValueError("hidden must divide by heads, heads by kv_heads, and vocab must be a multiple of 32")
    step = max(128, group_size)
    if hidden % step:
        raise ValueError(f"hidden must be a multiple of {step} (GPTQ packing and group size)")
    if intermediate is None:
        intermediate = -(-(hidden * 8 // 3) // step) * step  # Llama's ~8/3 ratio, rounded up to the group size
    if intermediate % step:
        raise ValueError(f"intermediate must be a multiple of {step}")
    head_dim = hidden // heads

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).half()

    tensors: dict[str, torch.Tensor] = {
        # Unit-variance embeddings and 1/sqrt(fan-in) projections keep activations O(1) through a few layers, so
        # logits have clear margins and greedy decoding is stable across kernels.
        "model.embed_tokens.weight": randn(vocab, hidden, std=1.0),
        "model.norm.weight": (1 + randn(hidden, std=0.1).float()).half(),
        "lm_head.weight": randn(vocab, hidden, std=1 / math.sqrt(hidden)),
    }
    reference: dict[str, torch.Tensor] = {}
    shapes = {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv_heads * head_dim, hidden),
        "v_proj": (kv_heads * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_proj": (intermediate, hidden),
        "up_proj": (intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.input_layernorm.weight"] = (1 + randn(hidden, std=0.1).float()).half()
        tensors[f"{prefix}.post_attention_layernorm.weight"] = (1 + randn(hidden, std=0.1).float()).half()
        for block, names in PROJECTIONS.items():
            for name in names:
                out_f, in_f = shapes[name]
                gain = attn_gain if name in ("q_proj", "k_proj") else 1.0
                weight = randn(out_f, in_f, std=gain / math.sqrt(in_f))
                key = f"{prefix}.{block}.{name}"
                for suffix, t in gptq_tensors(weight, group_size, act_order, sym, gen).items():
                    tensors[f"{key}.{suffix}"] = t.contiguous()
                if dump_reference:
                    reference[f"{key}.weight"] = weight

    quant = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": group_size,
        "desc_act": act_order,
        "sym": sym,
        "damp_percent": 0.01,
        "true_sequential": True,
        "static_groups": False,
        "checkpoint_format": "gptq",
    }
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_position,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float16",
        "quantization_config": quant,
    }
    if rope_scale and rope_scale != 1.0:
        config["rope_scaling"] = {"type": "linear", "factor": float(rope_scale)}

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if dump_reference:
        save_file(reference, str(out / "reference.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "quantize_config.json").write_text(
        json.dumps({k: quant[k] for k in ("bits", "group_size", "desc_act", "sym", "damp_percent", "true_sequential", "static_groups")}, indent=2) + "\n"
    )
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n")
    build_tokenizer(vocab).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(max_position), indent=2) + "\n")
    return config


def build_repeated_checkpoint(out: Path, layers: int, **shape: Any) -> dict[str, Any]:
    """A checkpoint of `layers` copies of ONE quantised layer (each copy its own tensors): the bytes read per
    token are those of a real model of that shape, for speed measurements, without quantising every layer.
    The EOS row of lm_head is zeroed: its logit 0 is never the greedy argmax, so requests run to max_new_tokens."""
    from safetensors.torch import load_file, save_file

    config = build_checkpoint(out, layers=1, **shape)
    one = load_file(str(out / "model.safetensors"))
    full = {k: v for k, v in one.items() if not k.startswith("model.layers.")}
    full["lm_head.weight"][int(config["eos_token_id"])].zero_()
    for i in range(layers):
        for k, v in one.items():
            if k.startswith("model.layers.0."):
                full[k.replace("model.layers.0.", f"model.layers.{i}.", 1)] = v.clone()
    save_file(full, str(out / "model.safetensors"), metadata={"format": "pt"})
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--hidden", type=int, default=512, help="hidden size (multiple of 128; 256..1024 is plenty)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="grouped-query attention (default: = heads)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP size (default ~8/3 hidden, rounded)")
    p.add_argument("--vocab", type=int, default=512, help="tokenizer/embedding size (multiple of 32)")
    p.add_argument("--group-size", type=int, default=128, choices=[-1, 32, 64, 128])
    p.add_argument("--act-order", action="store_true", help="desc_act: shuffled g_idx")
    p.add_argument("--asym", action="store_true", help="asymmetric zero points (default: symmetric, zero 8)")
    p.add_argument("--max-position", type=int, default=2048)
    p.add_argument("--rope-scale", type=float, default=None, help="write rope_scaling {type: linear, factor}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dump-reference", action="store_true", help="also write the fp16 weights that were quantized")
    p.add_argument("--attn-gain", type=float, default=1.0, help="scale q/k projections (sharper attention)")
    a = p.parse_args(argv)
    config = build_checkpoint(
        a.out, hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, intermediate=a.intermediate,
        vocab=a.vocab, group_size=a.group_size, act_order=a.act_order, sym=not a.asym, max_position=a.max_position,
        rope_scale=a.rope_scale, seed=a.seed, dump_reference=a.dump_reference, attn_gain=a.attn_gain,
    )
    size = sum(f.stat().st_size for f in a.out.iterdir()) / 2**20
    print(f"wrote {a.out} ({size:.1f} MiB): hidden={config['hidden_size']} layers={config['num_hidden_layers']} "
          f"intermediate={config['intermediate_size']} vocab={config['vocab_size']} "
          f"group_size={a.group_size} act_order={a.act_order} sym={not a.asym}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
