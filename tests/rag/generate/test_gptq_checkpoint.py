"""scripts/make_gptq_llama.py writes a GPTQ checkpoint in the exact storage convention ExLlamaV2 reads.

Runs on CPU: the checkpoint is dequantized here by an independent pure-torch reference (written from the format
description, not imported from the script) and compared with the fp16 weights the script quantized; the
unquantized pieces plus the dequantized projections are then loaded strictly into transformers' Llama to prove
names, shapes and config are those of a real LlamaForCausalLM.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tokenizers
import torch
from safetensors import torch as safetensors_torch

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_gptq_llama.py"
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_gptq_llama", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Reference GPTQ (AutoGPTQ v1) dequantization -> [out, in] float32.

    qweight int32 [in/8, out]: nibble j (bits 4j..4j+3) of row r is input row 8r+j.
    qzeros int32 [groups, out/8]: nibble j of column c is output column 8c+j; the stored value is zero - 1.
    w[i, o] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]).
    """
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    q = ((qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF).reshape(-1, qweight.shape[1])  # [in, out]
    z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, 8)) & 0xF).reshape(qzeros.shape[0], -1) + 1  # [groups, out]
    g = g_idx.long()
    return (scales.float()[g] * (q - z[g]).float()).t().contiguous()


def exllama_group_size(groups: int, rows: int) -> int:
    """How ExLlamaV2's QMatrix infers the GPTQ group size: the smallest power of two covering all rows."""
    gs = 1
    while gs * groups < rows:
        gs *= 2
    return gs


CASES = [
    # (group_size, act_order, sym)
    (128, False, True),
    (32, True, True),
    (64, True, False),
    (-1, False, True),
]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


@pytest.mark.parametrize(("group_size", "act_order", "sym"), CASES)
def test_checkpoint_dequantizes_to_the_reference_weights(tmp_path: Path, script: ModuleType, group_size: int, act_order: bool, sym: bool) -> None:
    out = tmp_path / "ckpt"
    argv = ["--out", str(out), "--hidden", "256", "--layers", "2", "--group-size", str(group_size), "--dump-reference"]
    argv += ["--act-order"] if act_order else []
    argv += [] if sym else ["--asym"]
    assert script.main(argv) == 0

    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == group_size
    assert qc["desc_act"] is act_order and qc["sym"] is sym and qc.get("checkpoint_format", "gptq") == "gptq"
    assert json.loads((out / "quantize_config.json").read_text())["group_size"] == group_size

    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    reference = safetensors_torch.load_file(str(out / "reference.safetensors"))
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    assert tensors["model.embed_tokens.weight"].shape == (vocab, hidden)
    assert tensors["lm_head.weight"].shape == (vocab, hidden)
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert tensors[key].dtype == torch.float16

    kv = config["num_key_value_heads"] * config["head_dim"]
    expected_shapes = {  # (in_features, out_features)
        "q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }
    for layer in range(config["num_hidden_layers"]):
        for proj in PROJ:
            key = f"model.layers.{layer}.{proj}"
            w_ref = reference[f"{key}.weight"].float()
            out_f, in_f = w_ref.shape
            assert (in_f, out_f) == expected_shapes[proj.split(".")[1]]
            qweight, qzeros, scales, g_idx = (tensors[f"{key}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx"))
            # Shapes and dtypes ExLlamaV2's make_q_matrix checks (TORCH_CHECK_DTYPE / TORCH_CHECK_SHAPES).
            gs = in_f if group_size == -1 else group_size
            groups = in_f // gs
            assert qweight.dtype == torch.int32 and qweight.shape == (in_f // 8, out_f)
            assert qzeros.dtype == torch.int32 and qzeros.shape == (groups, out_f // 8)
            assert scales.dtype == torch.float16 and scales.shape == (groups, out_f)
            assert g_idx.dtype == torch.int32 and g_idx.shape == (in_f,)
            if group_size != -1:
                assert exllama_group_size(groups, in_f) == group_size
            assert torch.bincount(g_idx.long(), minlength=groups).eq(gs).all(), "every group holds group_size rows"
            sequential = torch.equal(g_idx.long(), torch.arange(in_f) // gs)
            assert sequential is not (act_order and group_size != -1), "act-order shuffles g_idx, otherwise i // gs"

            w = dequantize(qweight, qzeros, scales, g_idx)
            step = scales.float()[g_idx.long()].t()  # [out, in]: the quantization step of each weight
            err = (w - w_ref).abs()
            # Round-to-nearest: never more than half a step away (tiny slack for float rounding).
            assert (err <= 0.5 * step * (1 + 1e-3) + 1e-7).all(), f"{key}: max err/step {(err / step).max():.3f}"
            assert err.mean() < 0.3 * step.mean()
            zeros = ((qzeros.unsqueeze(2) >> torch.arange(0, 32, 4, dtype=torch.int32).view(1, 1, 8)) & 0xF) + 1
            assert zeros.min() >= 1 and zeros.max() <= 15
            if sym:
                assert zeros.eq(8).all()


def test_tokenizer_loads_and_round_trips(tmp_path: Path, script: ModuleType) -> None:
    out = tmp_path / "ckpt"
    script.build_checkpoint(out, hidden=256, layers=1, vocab=512)
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 512 == json.loads((out / "config.json").read_text())["vocab_size"]
    assert (tok.token_to_id("<unk>"), tok.token_to_id("<s>"), tok.token_to_id("</s>")) == (0, 1, 2)
    for text in ("Hello world, BEGININPUT\ndate: 2021-01-01\nENDINPUT", "ünïcödé, 中文 and 😀 — all bytes", "  two  spaces\t"):
        enc = tok.encode(text)
        assert enc.ids[0] == 1, "encode() adds <s> like Llama's tokenizer"
        assert tok.decode(enc.ids) == text
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    # The prompt vocabulary compresses (merges were learned), and </s> is one special token.
    assert len(tok.encode("BEGININPUT", add_special_tokens=False).ids) < len("BEGININPUT")
    assert tok.encode("a</s>", add_special_tokens=False).ids[-1] == 2
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<s>" and tc["eos_token"] == "</s>" and tc["add_bos_token"] is True


def test_generation_config_and_rope_scaling(tmp_path: Path, script: ModuleType) -> None:
    cfg = script.build_checkpoint(tmp_path / "c", hidden=256, layers=1, rope_scale=2.0, max_position=4096)
    assert cfg["rope_scaling"] == {"type": "linear", "factor": 2.0} and cfg["max_position_embeddings"] == 4096
    assert json.loads((tmp_path / "c" / "generation_config.json").read_text())["eos_token_id"] == 2
    with pytest.raises(ValueError):
        script.build_checkpoint(tmp_path / "bad", hidden=200)


def test_transformers_llama_accepts_the_checkpoint(tmp_path: Path, script: ModuleType) -> None:
    """Names/shapes/config are a real Llama's: strict state-dict load of the dequantized model, finite logits."""
    import transformers
    out = tmp_path / "ckpt"
    config = script.build_checkpoint(out, hidden=256, layers=2, group_size=64, act_order=True, kv_heads=4)
    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith(".qweight"):
            base = key.removesuffix(".qweight")
            state[f"{base}.weight"] = dequantize(t, tensors[f"{base}.qzeros"], tensors[f"{base}.scales"], tensors[f"{base}.g_idx"])
        elif not key.endswith((".qzeros", ".scales", ".g_idx")):
            state[key] = t.float()
    hf_config = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "quantization_config"})
    model = transformers.LlamaForCausalLM(hf_config).eval()
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = torch.tensor([tok.encode("BEGININPUT\nThe sky is green.\nENDINPUT").ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config["vocab_size"]) and torch.isfinite(logits).all()
    # Random weights scaled for O(1) activations: logits are spread out, not collapsed to one token.
    assert logits.std() > 0.3 and logits[0, -1].argmax() != logits[0, -1].argmin()
