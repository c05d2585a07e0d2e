"""What a model file or directory is, and what ctxqa will load it with, read from headers only (no weights).

`inspect_model` reads a GGUF header (`gguf_file`), or a GPTQ/EXL2 directory's config.json, quantize_config.json
and safetensors header, and returns a `ModelInfo`: architecture, quantisation, the file's context length and
RoPE scaling, the chosen prompt profile, and the context length and RoPE scale the backend will be given
(`LoadPlan`). `load_generator` and `ctxqa models` both use it, so what `models` shows is what gets loaded.

Precedence for context length and RoPE scale: settings (CTXQA_LLM_CONTEXT_LENGTH / CTXQA_LLM_ROPE_SCALE), then
the file, then the profile (only where the file says nothing: an airophin converted without RoPE metadata).
llama.cpp allocates its KV cache up front, so without a setting it gets the file's context capped at
DEFAULT_MAX_CONTEXT, except for position-interpolated profiles (airophin: 8192 tokens are the point of it).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ctxqa.rag.generate.base import GeneratorError
from ctxqa.rag.generate.gguf_file import FILE_TYPES, read_gguf_header
from ctxqa.rag.profiles import ProfileChoice, choose_profile, get_profile

if TYPE_CHECKING:
    from ctxqa.rag.config import Settings

# Without a setting, llama.cpp gets the model's training context but at most this many tokens: its KV cache is
# allocated up front (bagel-8x7b trains on 32k, which would cost gigabytes of RAM for nothing).
DEFAULT_MAX_CONTEXT = 4096

ModelFormat = Literal["gguf", "gptq", "exl2", "fp16"]


@dataclass(frozen=True)
class RopeScaling:
    """The file's RoPE settings. `factor` is the linear (position interpolation) factor; 1.0 = none."""

    kind: str = "none"  # none | linear | yarn | dynamic | ...
    factor: float = 1.0
    freq_base: float | None = None
    original_context: int | None = None

    def describe(self) -> str:
        base = f", base {self.freq_base:g}" if self.freq_base else ""
        if self.kind == "none":
            return f"none{base}"
        orig = f" (trained {self.original_context})" if self.original_context else ""
        return f"{self.kind} x{self.factor:g}{orig}{base}"


@dataclass(frozen=True)
class GptqParams:
    bits: int
    group_size: int  # -1 = one group per column
    act_order: bool
    sym: bool | None
    source: str  # where the bits came from: quantize_config.json, config.json or the tensor shapes

    def describe(self) -> str:
        group = "no grouping" if self.group_size in (-1, 0) else f"group size {self.group_size}"
        return f"GPTQ {self.bits}-bit, {group}, act-order {'on' if self.act_order else 'off'} (from {self.source})"


@dataclass(frozen=True)
class LoadPlan:
    """What the backend will be given: None means "the backend reads it from the file"."""

    context_length: int | None
    rope_scale: float | None
    context_note: str
    rope_note: str


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    format: ModelFormat
    backend: Literal["llama_cpp", "exllamav2"]
    architecture: str
    name: str | None  # the model's own name (GGUF general.name, config.json _name_or_path)
    quantisation: str
    context_length: int | None  # as trained / as the file says
    rope: RopeScaling
    profile: ProfileChoice
    plan: LoadPlan
    experts: tuple[int, int] | None = None  # (experts, used per token) for mixture-of-experts models
    gptq: GptqParams | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)  # why the backend will refuse it

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) lines for `ctxqa models PATH`."""
        plan = self.plan
        ctx_used = "the file's" if plan.context_length is None else str(plan.context_length)
        rope_used = "the file's" if plan.rope_scale is None else f"linear x{plan.rope_scale:g}"
        out = [
            ("model", str(self.path)),
            ("name", self.name or "-"),
            ("format / backend", f"{self.format} / {self.backend}"),
            ("architecture", self.architecture),
            ("quantisation", self.quantisation),
            ("context length", f"{self.context_length or 'unknown'} in the file; uses {ctx_used} ({plan.context_note})"),
            ("RoPE scaling", f"{self.rope.describe()} in the file; uses {rope_used} ({plan.rope_note})"),
            ("profile", f"{self.profile.name} ({self.profile.reason})"),
        ]
        out += [("problem", p) for p in self.problems]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "name": self.name, "format": self.format, "backend": self.backend,
            "architecture": self.architecture, "quantisation": self.quantisation,
            "context_length": self.context_length, "experts": list(self.experts) if self.experts else None,
            "rope": {"type": self.rope.kind, "factor": self.rope.factor, "freq_base": self.rope.freq_base,
                     "original_context": self.rope.original_context},
            "gptq": None if self.gptq is None else {"bits": self.gptq.bits, "group_size": self.gptq.group_size,
                                                    "act_order": self.gptq.act_order, "sym": self.gptq.sym,
                                                    "source": self.gptq.source},
            "profile": {"name": self.profile.name, "reason": self.profile.reason},
            "load": {"context_length": self.plan.context_length, "context_note": self.plan.context_note,
                     "rope_scale": self.plan.rope_scale, "rope_note": self.plan.rope_note},
            "problems": list(self.problems),
        }


def inspect_model(path: Path, settings: Settings | None = None, *, spec: str | None = None) -> ModelInfo:
    """Describe the model at `path` (a .gguf file or a GPTQ/EXL2 directory); `spec` is the name the user gave
    (e.g. 'bundled:smollm2'), used for the profile when nothing better is known."""
    if path.is_file():
        return _inspect_gguf(path, settings, spec)
    if path.is_dir():
        return _inspect_dir(path, settings, spec)
    raise GeneratorError(f"model not found: {path}")


def configured_profile(settings: Settings) -> ProfileChoice:
    """The profile for `settings.llm_model` when CTXQA_LLM_PROFILE is unset: from the model's own name (GGUF
    general.name) or its file name; from the spec alone when the model is missing (loading it will say so)."""
    from ctxqa.rag.generate import resolve_model_path

    try:
        return inspect_model(resolve_model_path(settings.llm_model), settings, spec=settings.llm_model).profile
    except GeneratorError:
        return choose_profile(settings.llm_model)


# --- GGUF -------------------------------------------------------------------------------------------------------


def _inspect_gguf(path: Path, settings: Settings | None, spec: str | None) -> ModelInfo:
    try:
        header = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise GeneratorError(f"cannot read {path} as GGUF: {exc}; llm_model must be a .gguf file for llama_cpp") from exc
    meta = header.metadata
    arch = str(meta.get("general.architecture", "unknown"))
    name = meta.get("general.name") or meta.get("general.basename")
    n_ctx = _int(meta.get(f"{arch}.context_length"))
    kind = str(meta.get(f"{arch}.rope.scaling.type", "none") or "none")
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 1.0) or 1.0)
    if kind == "none" and factor != 1.0:
        kind = "linear"
    rope = RopeScaling(kind, factor if kind != "none" else 1.0, _float(meta.get(f"{arch}.rope.freq_base")),
                       _int(meta.get(f"{arch}.rope.scaling.original_context_length")))
    n_exp, n_used = _int(meta.get(f"{arch}.expert_count")), _int(meta.get(f"{arch}.expert_used_count"))
    experts = (n_exp, n_used or 0) if n_exp else None
    architecture = f"{arch} (mixture of {n_exp} experts, {n_used} active)" if experts else arch
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int) and ftype in FILE_TYPES:
        quant = f"GGUF {FILE_TYPES[ftype]}"
    else:
        common = ", ".join(f"{t} x{n}" for t, n in header.tensor_types.most_common(3))
        quant = f"GGUF tensors {common}" if common else "GGUF (no tensors)"
    choice = choose_profile(spec or str(path), str(name) if name else None)
    plan = plan_load("llama_cpp", n_ctx, rope, choice, settings)
    return ModelInfo(path, "gguf", "llama_cpp", architecture, str(name) if name else None, quant, n_ctx, rope,
                     choice, plan, experts=experts)


# --- GPTQ / EXL2 directories --------------------------------------------------------------------------------------


def _inspect_dir(path: Path, settings: Settings | None, spec: str | None) -> ModelInfo:
    config = _json(path / "config.json")
    if config is None:
        raise GeneratorError(f"{path} has no config.json: not a GPTQ/EXL2 model directory")
    tensors = _safetensors_shapes(path)
    raw_q = config.get("quantization_config")
    qcfg: dict[str, Any] = raw_q if isinstance(raw_q, dict) else {}
    problems: list[str] = []
    gptq: GptqParams | None = None
    if any(k.endswith(".q_weight") for k in tensors) or str(qcfg.get("quant_method", "")).lower() == "exl2":
        fmt: ModelFormat = "exl2"
        bpw = qcfg.get("bits")
        quant = f"EXL2 {bpw} bits per weight" if bpw else "EXL2"
    elif any(k.endswith(".qweight") for k in tensors) or str(qcfg.get("quant_method", "")).lower() == "gptq":
        fmt = "gptq"
        gptq, problems = gptq_params(path, config, tensors)
        quant = gptq.describe()
    else:
        fmt, quant = "fp16", "unquantised (fp16/bf16 safetensors)"
    if not tensors:
        problems.append(f"{path} has no *.safetensors (ExLlamaV2 reads only safetensors)")
    arch = str((config.get("architectures") or [config.get("model_type", "unknown")])[0])
    n_exp, n_used = _int(config.get("num_local_experts")), _int(config.get("num_experts_per_tok"))
    experts = (n_exp, n_used or 0) if n_exp else None
    if experts:
        arch = f"{arch} (mixture of {n_exp} experts, {n_used} active)"
    rs = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else None
    rope = RopeScaling(
        str(rs.get("type") or rs.get("rope_type") or "linear") if rs else "none",
        float(rs.get("factor", 1.0)) if rs else 1.0,
        _float(config.get("rope_theta")),
        _int(rs.get("original_max_position_embeddings")) if rs else None,
    )
    name = config.get("_name_or_path") if isinstance(config.get("_name_or_path"), str) else None
    choice = choose_profile(spec or str(path), name)
    n_ctx = _int(config.get("max_position_embeddings"))
    plan = plan_load("exllamav2", n_ctx, rope, choice, settings)
    return ModelInfo(path, fmt, "exllamav2", arch, name, quant, n_ctx, rope, choice, plan, experts=experts,
                     gptq=gptq, problems=tuple(problems))


def gptq_params(path: Path, config: dict[str, Any], tensors: dict[str, list[int]]) -> tuple[GptqParams, list[str]]:
    """GPTQ parameters from quantize_config.json, config.json's quantization_config and the tensor shapes, and
    the reasons ExLlamaV2 cannot load them (it reads 4-bit GPTQ only: 3-bit files fail in its kernels)."""
    sources: list[tuple[str, dict[str, Any]]] = []
    qc = _json(path / "quantize_config.json")
    if isinstance(qc, dict):
        sources.append(("quantize_config.json", qc))
    if isinstance(config.get("quantization_config"), dict):
        sources.append(("config.json", config["quantization_config"]))
    bits_found = [(name, src["bits"]) for name, src in sources if "bits" in src]
    problems = []
    for name, value in bits_found:
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path / name}: bits is {value!r}, expected an integer such as 4")
    shape_bits = _bits_from_shapes(tensors)
    if shape_bits is not None:
        bits_found.append(("tensor shapes", shape_bits))
    wrong = [(name, b) for name, b in bits_found if b != 4]
    if wrong:
        found = "; ".join(f"{name}: bits={b}" for name, b in bits_found)
        problems.append(
            f"{path} is a {wrong[0][1]}-bit GPTQ model ({found}); ExLlamaV2 0.3.2 reads only 4-bit GPTQ (other "
            f"widths fail in its kernels). Use the 4-bit files of this model, an EXL2 quantisation, or a GGUF "
            f"with llm_backend=llama_cpp"
        )
    first = sources[0][1] if sources else {}
    bits_value = next((b for _, b in bits_found if isinstance(b, int)), 4)
    group = first.get("group_size", -1)
    params = GptqParams(
        bits=int(bits_value),
        group_size=int(group) if isinstance(group, int) else -1,
        act_order=bool(first.get("desc_act", False)),
        sym=first.get("sym") if isinstance(first.get("sym"), bool) else None,
        source=bits_found[0][0] if bits_found else "defaults (no quantize_config.json)",
    )
    return params, problems


def _bits_from_shapes(tensors: dict[str, list[int]]) -> int | None:
    """GPTQ packs 32 // bits rows per int32: qweight rows * 32 / g_idx length (the input rows) is the width."""
    for key, shape in tensors.items():
        if key.endswith(".qweight") and shape:
            g_idx = tensors.get(key.removesuffix(".qweight") + ".g_idx")
            if g_idx and g_idx[0]:
                bits, rem = divmod(shape[0] * 32, g_idx[0])
                return bits if rem == 0 else None
    return None


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from every *.safetensors header (8-byte length, then JSON); no tensor data is read."""
    out: dict[str, list[int]] = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            with file.open("rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as exc:
            raise GeneratorError(f"{file} is not a readable safetensors file: {exc}") from exc
        out.update({k: list(v.get("shape", [])) for k, v in header.items() if isinstance(v, dict)})
    return out


# --- what the backend gets ---------------------------------------------------------------------------------------


def plan_load(
    backend: str, file_context: int | None, rope: RopeScaling, choice: ProfileChoice, settings: Settings | None
) -> LoadPlan:
    profile = get_profile(settings.llm_profile) if settings is not None and settings.llm_profile else get_profile(choice.name)
    set_ctx = settings.llm_context_length if settings is not None else None
    set_rope = settings.llm_rope_scale if settings is not None else None
    interpolated = profile.rope_scale != 1.0
    if set_ctx:
        ctx, ctx_note = set_ctx, "from CTXQA_LLM_CONTEXT_LENGTH"
    elif interpolated:
        ctx, ctx_note = profile.context_length, f"profile {profile.name} (position-interpolated)"
    elif backend == "llama_cpp":
        ctx = min(file_context, DEFAULT_MAX_CONTEXT) if file_context else DEFAULT_MAX_CONTEXT
        ctx_note = "from the file" if file_context and file_context <= DEFAULT_MAX_CONTEXT else (
            f"capped at {DEFAULT_MAX_CONTEXT} (KV cache memory); set CTXQA_LLM_CONTEXT_LENGTH for more")
    else:
        ctx, ctx_note = None, "from config.json (max_position_embeddings)"
    if set_rope is not None:
        scale, rope_note = set_rope, "from CTXQA_LLM_ROPE_SCALE"
    elif rope.kind != "none":
        scale, rope_note = None, f"from the file ({rope.describe()})"
    elif interpolated:
        scale, rope_note = profile.rope_scale, f"linear x{profile.rope_scale:g} from profile {profile.name} (the file has none)"
    else:
        scale, rope_note = None, "none"
    return LoadPlan(ctx, scale, ctx_note, rope_note)


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GeneratorError(f"{path} must hold a JSON object")
    return data


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
