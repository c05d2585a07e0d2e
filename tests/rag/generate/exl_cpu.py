"""The real exllamav2 0.3.2 Python package on a machine without CUDA.

`import exllamav2` loads its compiled CUDA extension `exllamav2_ext` (or JIT-compiles it, which needs nvcc). The
Python around it (config reading, tokenizer, attention masks, the attention function of its torch path, the
generator classes) is plain Python and torch. `real_exllamav2()` puts an empty stand-in module in place of the
extension, imports the real package, and afterwards removes every exllamav2 module again, so no other test sees
an exllamav2 without kernels. Anything that would call a kernel fails (AttributeError on the stand-in): such code
is exercised on the GPU (bench/gpu_check.sh) only.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

HAVE_EXLLAMAV2 = importlib.util.find_spec("exllamav2") is not None
SKIP_REASON = "exllamav2 (Python package) not installed: pip install --no-deps exllamav2==0.3.2 (scripts/setup.sh does, with the dev extra)"


def _ours(name: str) -> bool:
    return name == "exllamav2_ext" or name == "exllamav2" or name.startswith("exllamav2.")


@contextmanager
def real_exllamav2() -> Iterator[types.ModuleType]:
    if not HAVE_EXLLAMAV2:
        pytest.skip(SKIP_REASON)
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for k in saved:
        del sys.modules[k]
    sys.modules["exllamav2_ext"] = types.ModuleType("exllamav2_ext")  # stand-in for the compiled CUDA kernels
    try:
        import exllamav2
        import exllamav2.attn
        import exllamav2.generator  # noqa: F401

        yield exllamav2
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


@contextmanager
def without_exllamav2_modules() -> Iterator[None]:
    """Run a fresh `import exllamav2` inside, and forget whatever it imported afterwards."""
    if not HAVE_EXLLAMAV2:
        pytest.skip(SKIP_REASON)
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for k in saved:
        del sys.modules[k]
    try:
        yield
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
