"""ExLlamaV2 0.3.2's rough edges, handled in one place and testable without a GPU.

- `import_exllamav2`: an ImportError can mean exllamav2 is missing, a dependency is missing, a prebuilt
  extension was compiled for another torch ("undefined symbol"), or a broken flash-attn (exllamav2 probes it at
  import and catches only ModuleNotFoundError). Each gets its own message.
- `read_config`: config.json values of the wrong type escape ExLlamaV2Config as a raw TypeError deep inside it;
  they are checked first, by name.
- `configure_attention`: without flash-attn, exllamav2 0.3.2 computes attention with torch SDPA, and there
  `_attn_torch` passes the mask only for block-diagonal (vision) layers (attn.py: `if ... block_diag_layers or
  causal: attn_mask_lr = get_block_diag_mask()`, which is None for text): prompt processing is then not causal
  and padding is not masked. `no_sdpa` selects its matmul attention, which applies the causal and padding masks.
- `completion_times`: exllamav2 reports `time_prefill` up to the first decode step and `time_generate` over all
  `new_tokens` decode steps, the first included; the `Completion` contract counts the first token as prefill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctxqa.rag.generate.base import GeneratorError

INSTALL_HINT = "pip install 'ctxqa[gpu]' (exllamav2==0.3.2, tokenizers)"

# config.json keys ExLlamaV2Config reads with arithmetic: a string there fails far from the cause.
_INT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "max_position_embeddings", "vocab_size", "head_dim", "num_local_experts", "num_experts_per_tok")
_FLOAT_KEYS = ("rms_norm_eps", "rope_theta", "layer_norm_eps")


def import_exllamav2() -> Any:
    """Import exllamav2 (and its generator) or raise a GeneratorError that names the real cause."""
    try:
        import exllamav2
        import exllamav2.generator  # noqa: F401 - imported for the caller
    except ImportError as exc:
        raise GeneratorError(explain_import_error(exc)) from exc
    except Exception as exc:  # a JIT build of the extension fails with RuntimeError/OSError/CalledProcessError
        raise GeneratorError(
            f"building/loading the ExLlamaV2 CUDA extension failed: {type(exc).__name__}: {exc}. It needs nvcc "
            f"matching torch's CUDA and the CUDA headers (CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS), or a prebuilt "
            f"wheel for this torch (see ../shared/gpu/README.md)"
        ) from exc
    return exllamav2


def explain_import_error(exc: ImportError) -> str:
    text = str(exc)
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    where = getattr(exc, "path", None) or ""
    if missing == "exllamav2":
        return f"llm_backend=exllamav2 needs the exllamav2 package, which is not installed: {INSTALL_HINT}"
    if "flash_attn" in text or "flash_attn" in where:
        return (
            f"flash-attn is installed but cannot be imported ({text}); exllamav2 imports it when present. It was "
            f"built for another torch/CUDA: reinstall flash-attn for this torch, uninstall it (ExLlamaV2 then runs "
            f"without paged attention), or set EXLLAMA_NO_FLASH_ATTN=1"
        )
    if "undefined symbol" in text or "exllamav2_ext" in text or "exllamav2_ext" in where:
        return (
            f"the prebuilt exllamav2 extension does not match this torch ({text}): install the exllamav2 wheel built "
            f"for the installed torch and CUDA, or the source wheel (its CUDA code is then compiled at first import)"
        )
    if missing:
        return f"exllamav2 cannot be imported: it needs the Python package {missing!r}, which is missing ({text}): pip install {missing}"
    return f"exllamav2 cannot be imported: {type(exc).__name__}: {text}"


def check_config_types(path: Path) -> dict[str, Any]:
    """config.json as a dict, with the numeric keys ExLlamaV2 uses checked by name."""
    file = path / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"{file} cannot be read as JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise GeneratorError(f"{file} must hold a JSON object, not {type(config).__name__}")
    for key in _INT_KEYS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise GeneratorError(f"{file}: {key} is {value!r} ({type(value).__name__}); it must be an integer")
    for key in _FLOAT_KEYS:
        value = config.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise GeneratorError(f"{file}: {key} is {value!r} ({type(value).__name__}); it must be a number")
    rs = config.get("rope_scaling")
    if rs is not None and not (isinstance(rs, dict) and isinstance(rs.get("factor", 1.0), (int, float))):
        raise GeneratorError(f"{file}: rope_scaling is {rs!r}; expected {{\"type\": \"linear\", \"factor\": 2.0}}")
    return config


def read_config(config_cls: Any, path: Path) -> Any:
    """`ExLlamaV2Config(path)`, with config.json checked first and its remaining failures named."""
    check_config_types(path)
    try:
        return config_cls(str(path))
    except (AssertionError, ValueError, KeyError, OSError, TypeError) as exc:
        raise GeneratorError(
            f"ExLlamaV2 cannot read the model in {path}: {type(exc).__name__}: {exc} (check config.json and that the "
            f"*.safetensors hold the tensors it names)"
        ) from exc


def configure_attention(config: Any, *, flash_attn: bool) -> None:
    """Without flash-attn, use exllamav2's matmul attention: its SDPA path drops the causal and padding masks."""
    if not flash_attn:
        config.no_sdpa = True


def completion_times(result: dict[str, Any]) -> tuple[float, float]:
    """(time_prefill, time_generate) in the `Completion` contract's terms from an exllamav2 end-of-job result.

    exllamav2 stamps `time_first_token` before the first decode step, so its `time_generate` spans all
    `new_tokens` steps; one step (the average) moves from generate to prefill, which makes the first token part
    of the time to first token and `(new_tokens - 1) / time_generate` the decode rate.
    """
    t_prefill, t_gen, n = float(result["time_prefill"]), float(result["time_generate"]), int(result["new_tokens"])
    if n <= 0 or t_gen <= 0:
        return t_prefill, max(t_gen, 0.0)
    step = t_gen / n
    return t_prefill + step, t_gen - step
