"""Model inspection for GPTQ directories (inspect.py) and the refusal of non-4-bit GPTQ at load.

Checkpoints are real AutoGPTQ-layout directories from scripts/make_gptq_llama.py; the GGUF side is covered with
the seed architectures in test_gguf_seeds.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ctxqa.rag.config import Settings
from ctxqa.rag.generate.base import GeneratorError
from ctxqa.rag.generate.inspect import _bits_from_shapes, inspect_model

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_gptq_llama.py"


@pytest.fixture(autouse=True)
def _no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXQA_CONFIG", str(tmp_path / "absent.toml"))


@pytest.fixture(scope="module")
def gptq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_gptq_llama", SCRIPT)
    assert spec and spec.loader
    mk = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mk
    spec.loader.exec_module(mk)
    d = tmp_path_factory.mktemp("m") / "airophin-v2-13b-PI-8k-GPTQ"
    mk.build_checkpoint(d, hidden=256, layers=1, group_size=32, act_order=True, max_position=4096, rope_scale=2.0)
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_gptq_directory_is_described_without_loading(gptq: Path) -> None:
    info = inspect_model(gptq)
    assert (info.format, info.backend, info.architecture) == ("gptq", "exllamav2", "LlamaForCausalLM")
    assert info.gptq is not None and (info.gptq.bits, info.gptq.group_size, info.gptq.act_order) == (4, 32, True)
    assert info.quantisation == "GPTQ 4-bit, group size 32, act-order on (from quantize_config.json)"
    assert info.context_length == 4096 and (info.rope.kind, info.rope.factor) == ("linear", 2.0)
    assert info.profile.name == "airophin" and "file name" in info.profile.reason
    # The profile is position-interpolated: its 8192 context; the RoPE scale comes from config.json.
    assert (info.plan.context_length, info.plan.rope_scale) == (8192, None) and "from the file" in info.plan.rope_note
    assert not info.problems
    over = inspect_model(gptq, Settings(llm_context_length=6000, llm_rope_scale=1.5)).plan
    assert (over.context_length, over.rope_scale) == (6000, 1.5)
    d = info.to_dict()
    assert d["gptq"]["bits"] == 4 and d["load"]["context_length"] == 8192 and d["profile"]["name"] == "airophin"


def _set_bits(d: Path, quantize_config: int | None, config: int | None) -> None:
    if quantize_config is None:
        (d / "quantize_config.json").unlink()
    else:
        q = json.loads((d / "quantize_config.json").read_text())
        q["bits"] = quantize_config
        (d / "quantize_config.json").write_text(json.dumps(q))
    cfg = json.loads((d / "config.json").read_text())
    if config is None:
        cfg["quantization_config"].pop("bits")
    else:
        cfg["quantization_config"]["bits"] = config
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(("qc", "cfg", "named"), [
    (3, 3, "quantize_config.json: bits=3; config.json: bits=3"),
    (None, 3, "config.json: bits=3"),
    (3, None, "quantize_config.json: bits=3"),
])
def test_non_4_bit_gptq_is_refused_at_load_naming_where_the_bits_were_found(
        gptq: Path, tmp_path: Path, qc: int | None, cfg: int | None, named: str) -> None:
    d = _copy(gptq, tmp_path / "Airoboros-65B-GPT4-m2.0-GPTQ-3bit")
    _set_bits(d, qc, cfg)
    info = inspect_model(d)
    assert len(info.problems) == 1 and named in info.problems[0] and "reads only 4-bit GPTQ" in info.problems[0]
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    # Refused at load with that message, on any machine (before the CUDA check and before importing exllamav2).
    with pytest.raises(GeneratorError) as e:
        ExLlamaV2Generator(d)
    assert named in str(e.value) and "3-bit GPTQ model" in str(e.value)


def test_bits_from_tensor_shapes_when_no_json_says() -> None:
    # 4-bit: 8 rows per int32; 3-bit: 32 rows in 3 int32s; g_idx has one entry per input row.
    assert _bits_from_shapes({"l.qweight": [32, 64], "l.g_idx": [256]}) == 4
    assert _bits_from_shapes({"l.qweight": [24, 64], "l.g_idx": [256]}) == 3
    assert _bits_from_shapes({"l.weight": [64, 64]}) is None


def test_tensor_shapes_contradicting_the_json_are_refused(gptq: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    d = _copy(gptq, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    for k in [k for k in t if k.endswith(".qweight")]:
        t[k] = t[k][: t[k].shape[0] * 3 // 4].contiguous()  # the row count of a 3-bit packing
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    problem = inspect_model(d).problems[0]
    assert "quantize_config.json: bits=4" in problem and "tensor shapes: bits=3" in problem


def test_unquantised_and_broken_directories(gptq: Path, tmp_path: Path) -> None:
    d = tmp_path / "fp16"
    d.mkdir()
    cfg = json.loads((gptq / "config.json").read_text())
    cfg.pop("quantization_config")
    (d / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(d / "model.safetensors"))
    assert inspect_model(d).format == "fp16"
    with pytest.raises(GeneratorError, match="no config.json"):
        inspect_model(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(GeneratorError, match="not a readable safetensors file"):
        inspect_model(d)
