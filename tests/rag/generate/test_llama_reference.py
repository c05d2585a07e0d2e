"""The pure-torch reference Llama (llama_reference.py) equals transformers' LlamaForCausalLM on CPU, with and
without linear RoPE scaling. The GPU check compares ExLlamaV2's logits with this reference, so it must be right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tests.rag.generate.llama_reference import ReferenceLlama

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_gptq_llama.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_gptq_llama", SCRIPT)
    assert spec and spec.loader
    mk = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mk
    spec.loader.exec_module(mk)
    d = tmp_path_factory.mktemp("gptq") / "tiny"
    mk.build_checkpoint(d, hidden=256, layers=2, heads=8, kv_heads=4, group_size=64, act_order=True, attn_gain=2.0,
                        max_position=512, rope_scale=2.0, seed=3)
    return d


def hf_logits(d: Path, ref: ReferenceLlama, ids: torch.Tensor, rope: float | None) -> torch.Tensor:
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("quantization_config")
    cfg.pop("rope_scaling", None)
    if rope:
        cfg["rope_scaling"] = {"type": "linear", "factor": rope}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    model.load_state_dict(ref.weights, strict=True)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("rope", [None, 2.0])
def test_reference_equals_transformers(checkpoint: Path, rope: float | None) -> None:
    ref = ReferenceLlama.load(checkpoint, rope_scale=rope or 1.0)
    ids = torch.randint(3, 512, (2, 200), generator=torch.Generator().manual_seed(1))
    ours = ref.logits(ids)
    theirs = hf_logits(checkpoint, ref, ids, rope)
    assert (ours - theirs).abs().max().item() < 1e-3
    other = hf_logits(checkpoint, ref, ids, 1.0 if rope else 2.0)  # the other RoPE: clearly different logits
    assert (ours - other).abs().max().item() > 0.1


def test_rope_scale_defaults_to_config_json(checkpoint: Path) -> None:
    assert ReferenceLlama.load(checkpoint).rope_scale == 2.0
