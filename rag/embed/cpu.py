"""What the embedding runtimes need to know about the CPU: its model, its feature flags (/proc/cpuinfo, and CPUID as
the kernels see it), the cores this process may use, and the ISA cap a user set for oneDNN (OpenVINO's kernels).

Why a module of its own: the backend choice is cached per CPU (rag/embed/choose.py), OpenVINO's bf16 path depends
on whether the CPU has native bf16 (rag/embed/openvino_runtime.py), and the int8 recipe falls back on the VNNI
flags where its saturation probe cannot run (rag/embed/onnx_int8.py). All three read the same facts from here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) from which bf16 kernels are allowed; lower caps (AVX2, AVX512_CORE,
# AVX512_CORE_VNNI...) disable them. OpenVINO's CPU plugin honours the cap for its kernels but still reports BF16 in
# its capabilities, so a bf16 model then fails to compile ("Supported primitive descriptors list is empty").
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
              "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")

# Flags meaning u8 x s8 dot products accumulate straight into int32 (no int16 intermediate that can saturate).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int  # logical CPUs this process may run on (affinity), what the runtimes' thread pools use
    onednn_max_isa: str  # ONEDNN_MAX_CPU_ISA, "" when unset
    # The features CPUID reports to this process, as numpy detects them at run time (what the runtimes' kernel
    # dispatch sees). Usually the same as `flags`; not under an emulator (qemu-x86_64 -cpu Haswell passes the
    # host's /proc/cpuinfo through) or a hypervisor that masks one but not the other.
    isa: frozenset[str] = frozenset()

    @property
    def flags_digest(self) -> str:
        return hashlib.sha256(" ".join(sorted(self.flags)).encode()).hexdigest()[:16]

    @property
    def isa_digest(self) -> str:
        return hashlib.sha256(" ".join(sorted(self.isa)).encode()).hexdigest()[:16]

    @property
    def int8_dot_products(self) -> bool:
        """VNNI or AMX-INT8. Without them (AVX2-only CPUs, AVX-512 before Cascade Lake) x86 int8 GEMMs multiply
        u8 x s8 pairs into int16 with saturation (vpmaddubsw), which bends vectors of full-range int8 weights."""
        return any(f in self.flags for f in VNNI_FLAGS)

    @property
    def onednn_bf16(self) -> bool:
        """Native bf16 for oneDNN/OpenVINO: the flag, and no ISA cap below AVX512_CORE_BF16."""
        return ("avx512_bf16" in self.flags or "amx_bf16" in self.flags) and \
            (not self.onednn_max_isa or self.onednn_max_isa.upper() in _BF16_ISAS)


def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:  # not Linux: the platform's name, no flags (int8 then counts as saturating: the safe side)
        import platform

        model = platform.processor() or platform.machine()
    return model or "unknown", flags


def _runtime_isa() -> frozenset[str]:
    import importlib

    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, numpy 1
        try:
            features: dict[str, bool] = importlib.import_module(name).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return frozenset(k for k, v in features.items() if v)
    return frozenset()


@lru_cache(maxsize=1)
def _static() -> tuple[str, frozenset[str], frozenset[str]]:
    return (*_read_cpuinfo(), _runtime_isa())


def cpu_info() -> CpuInfo:
    model, flags, isa = _static()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return CpuInfo(model=model, flags=flags, cores=cores,
                   onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip(), isa=isa)
