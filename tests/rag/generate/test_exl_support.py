"""ExLlamaV2's rough edges (exl_support.py) with the real exllamav2 0.3.2 Python package on CPU.

Import failures are produced for real: a fresh `import exllamav2` with a broken flash-attn, a prebuilt extension
compiled for another torch, a missing dependency, no exllamav2 at all (the broken modules are small stand-ins
that raise exactly the ImportError such a module raises). Config reading uses the real ExLlamaV2Config.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from ctxqa.rag.generate.base import Completion, GeneratorError
from ctxqa.rag.generate.exl_support import check_config_types, completion_times, import_exllamav2, read_config
from tests.rag.generate.exl_cpu import real_exllamav2, without_exllamav2_modules

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_gptq_llama.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_gptq_llama", SCRIPT)
    assert spec and spec.loader
    mk = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mk
    spec.loader.exec_module(mk)
    d = tmp_path_factory.mktemp("gptq") / "tiny"
    mk.build_checkpoint(d, hidden=256, layers=1, group_size=32, act_order=True, max_position=4096, rope_scale=2.0)
    return d


# --- (b) speed figures from what exllamav2 reports ------------------------------------------------------------


def test_completion_times_count_the_first_token_as_prefill() -> None:
    # exllamav2: time_prefill ends before the first decode step; time_generate spans all 10 steps (first included).
    t_prefill, t_generate = completion_times({"time_prefill": 0.1, "time_generate": 1.0, "new_tokens": 10})
    c = Completion("x", 50, 10, "length", t_prefill, t_generate)
    assert c.tokens_per_second == pytest.approx(10.0)  # 10 tokens in 1.0 s of decoding, not 9
    assert c.time_prefill == pytest.approx(0.2)  # time to first token: prefill plus one decode step
    assert completion_times({"time_prefill": 0.1, "time_generate": 0.0, "new_tokens": 0}) == (0.1, 0.0)


# --- (c) errors name the real cause ---------------------------------------------------------------------------


def _message(monkeypatch: pytest.MonkeyPatch, stand_in_ext: bool = True) -> str:
    with without_exllamav2_modules():
        if stand_in_ext:
            monkeypatch.setitem(sys.modules, "exllamav2_ext", types.ModuleType("exllamav2_ext"))
        with pytest.raises(GeneratorError) as info:
            import_exllamav2()
    return str(info.value)


def test_a_broken_flash_attn_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise ImportError("/venv/lib/python3.12/site-packages/flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so: '
        'undefined symbol: _ZN3c104cuda9SetDeviceEi")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = _message(monkeypatch)
    assert "flash-attn is installed but cannot be imported" in msg and "EXLLAMA_NO_FLASH_ATTN=1" in msg
    assert "not installed" not in msg and "undefined symbol" in msg


def test_a_prebuilt_extension_for_another_torch_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exllamav2_ext.py").write_text(
        'raise ImportError("/venv/lib/python3.12/site-packages/exllamav2_ext.cpython-312-x86_64-linux-gnu.so: '
        'undefined symbol: _ZN2at4_ops5empty4callE")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = _message(monkeypatch, stand_in_ext=False)
    assert "prebuilt exllamav2 extension does not match this torch" in msg and "not installed" not in msg


def test_a_missing_dependency_and_a_missing_exllamav2_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import of tokenizers fails with ModuleNotFoundError
    msg = _message(monkeypatch)
    assert "needs the Python package 'tokenizers'" in msg and "pip install tokenizers" in msg
    monkeypatch.delitem(sys.modules, "tokenizers")
    with without_exllamav2_modules():
        monkeypatch.setitem(sys.modules, "exllamav2", None)
        with pytest.raises(GeneratorError, match="needs the exllamav2 package, which is not installed"):
            import_exllamav2()


def test_a_wrongly_typed_config_value_is_named(checkpoint: Path, tmp_path: Path) -> None:
    with real_exllamav2():
        from exllamav2 import ExLlamaV2Config

        config = read_config(ExLlamaV2Config, checkpoint)
        # What the backend relies on ExLlamaV2Config to read from config.json.
        assert config.max_seq_len == 4096 and config.scale_pos_emb == 2.0 and config.no_sdpa is False
        for key, value, hint in (("num_hidden_layers", "1", "must be an integer"), ("rms_norm_eps", "1e-5", "must be a number"),
                                 ("rope_scaling", {"type": "linear", "factor": "2"}, "expected")):
            bad = tmp_path / key
            bad.mkdir()
            for f in checkpoint.iterdir():
                (bad / f.name).symlink_to(f)
            cfg = json.loads((checkpoint / "config.json").read_text())
            cfg[key] = value
            (bad / "config.json").unlink()
            (bad / "config.json").write_text(json.dumps(cfg))
            with pytest.raises(GeneratorError) as info:
                read_config(ExLlamaV2Config, bad)
            assert f"config.json: {key} is" in str(info.value) and hint in str(info.value)
        # A value the pre-check does not know still comes out as a GeneratorError naming the directory, not a
        # raw TypeError from inside ExLlamaV2Config.
        cfg = json.loads((checkpoint / "config.json").read_text())
        cfg["logit_scale"] = "1"  # read by ExLlamaV2Config as a float
        other = tmp_path / "other"
        other.mkdir()
        for f in checkpoint.iterdir():
            (other / f.name).symlink_to(f)
        (other / "config.json").unlink()
        (other / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(GeneratorError, match=r"ExLlamaV2 cannot read the model in .*TypeError"):
            read_config(ExLlamaV2Config, other)


def test_config_json_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(GeneratorError, match="must hold a JSON object"):
        check_config_types(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(GeneratorError, match="cannot be read as JSON"):
        check_config_types(tmp_path)
