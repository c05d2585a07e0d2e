"""llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`), started with llama.cpp's extra
CPU buffer types off.

Why a launcher: llama-cpp-python 0.3.36 built natively on an AMX Xeon crashes at the first decode when the AMX
buffer type is in use (seen with SmolLM2 Q4_1; ctxqa's in-process backend turns them off for the same reason,
`CTXQA_LLM_EXTRA_BUFFERS`). The server has no option for it, so this wraps `llama_model_default_params` while the
unchanged server runs.

`--no_prompt_cache` (this launcher's own flag, taken out before the server parses its arguments) makes every
request evaluate its whole prompt, as llama.cpp's own server does with `"cache_prompt": false`. By default
llama-cpp-python re-evaluates only what differs from the previous prompt, which changes the last bits of the
logits and so can flip a greedy near-tie: two identical requests then get different answers (seen here with a
ctxqa prompt). ctxqa's in-process backend resets for the same reason. The other arguments are the server's:

    python scripts/llama_server.py --model FILE.gguf --model_alias smollm2 --host 127.0.0.1 --port 8081 \
        [--no_prompt_cache]
"""

from __future__ import annotations

import os
import sys

import llama_cpp
from llama_cpp.server.__main__ import main


def _without_extra_buffers() -> None:
    module = llama_cpp.llama.llama_cpp
    original = module.llama_model_default_params

    def adjusted():  # type: ignore[no-untyped-def]
        params = original()
        if any(f[0] == "use_extra_bufts" for f in getattr(type(params), "_fields_", ())):
            params.use_extra_bufts = False
        return params

    module.llama_model_default_params = adjusted


def _without_prompt_cache() -> None:
    original = llama_cpp.Llama.generate

    def generate(self, tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reset()  # no cached prefix to match: the whole prompt is evaluated
        return original(self, tokens, *args, **kwargs)

    llama_cpp.Llama.generate = generate  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("LLAMA_EXTRA_BUFFERS", "0") != "1":
        _without_extra_buffers()
    if "--no_prompt_cache" in sys.argv:
        sys.argv.remove("--no_prompt_cache")
        _without_prompt_cache()
    main()
