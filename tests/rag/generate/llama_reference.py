"""An independent pure-torch Llama for GPTQ checkpoints (scripts/make_gptq_llama.py), and an ExLlamaV2 stand-in
built on it.

- `ReferenceLlama.logits(ids)`: fp32 forward of the dequantised checkpoint (`dequantize` from
  test_gptq_checkpoint, written from the format description), with linear RoPE scaling. It is checked against
  transformers' LlamaForCausalLM on CPU (test_llama_reference.py) and is what the GPU check compares ExLlamaV2's
  logits with, so the GPU machine needs neither transformers nor a second implementation.
- `ExLlamaV2StandIn`: the same weights behind `ExLlamaV2.forward`'s contract (input_ids [B, q], a cache with
  `current_seq_len`, `input_mask`, `position_offsets`, `preprocess_only`, prefill in chunks of
  max_input_len // B). Attention is exllamav2 0.3.2's own `_attn_torch` with its own mask builder
  (`ExLlamaV2Attention.Params`), given as `attn`/`params_cls` by the caller from the real package; only the
  CUDA kernels (projections, RoPE) are replaced by torch. The batcher tests run on it where no GPU exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tests.rag.generate.test_gptq_checkpoint import dequantize


@dataclass
class ReferenceLlama:
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]  # HF names, fp32, linear weights [out, in]
    rope_scale: float = 1.0

    @classmethod
    def load(cls, model_dir: Path, rope_scale: float | None = None) -> ReferenceLlama:
        from safetensors.torch import load_file

        config = json.loads((model_dir / "config.json").read_text())
        t = load_file(str(model_dir / "model.safetensors"))
        weights: dict[str, torch.Tensor] = {}
        for key, value in t.items():
            if key.endswith(".qweight"):
                base = key.removesuffix(".qweight")
                weights[f"{base}.weight"] = dequantize(value, t[f"{base}.qzeros"], t[f"{base}.scales"], t[f"{base}.g_idx"])
            elif not key.endswith((".qzeros", ".scales", ".g_idx")):
                weights[key] = value.float()
        if rope_scale is None:
            rs = config.get("rope_scaling") or {}
            rope_scale = float(rs.get("factor", 1.0)) if rs.get("type", rs.get("rope_type")) == "linear" else 1.0
        return cls(config, weights, rope_scale)

    def to(self, device: str | torch.device) -> ReferenceLlama:
        """The same model with its weights on `device` (the GPU check computes the reference on the GPU)."""
        return ReferenceLlama(self.config, {k: v.to(device) for k, v in self.weights.items()}, self.rope_scale)

    # --- pieces ---------------------------------------------------------------------------------------------

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads", self.heads))

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.heads)

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        eps = float(self.config.get("rms_norm_eps", 1e-5))
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weights[name]

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, D], positions [B, T] (float): HF's rotate_half convention, positions / rope_scale."""
        d = self.head_dim
        base = float(self.config.get("rope_theta", 10000.0))
        inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=positions.device) / d))
        ang = (positions.float() / self.rope_scale)[..., None] * inv  # [B, T, D/2]
        cos = torch.cat([ang.cos(), ang.cos()], -1)[:, :, None, :]
        sin = torch.cat([ang.sin(), ang.sin()], -1)[:, :, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def qkv(self, h: torch.Tensor, layer: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = f"model.layers.{layer}"
        x = self.norm(h, f"{p}.input_layernorm.weight")
        b, t, _ = x.shape
        q = (x @ self.weights[f"{p}.self_attn.q_proj.weight"].t()).view(b, t, self.heads, self.head_dim)
        k = (x @ self.weights[f"{p}.self_attn.k_proj.weight"].t()).view(b, t, self.kv_heads, self.head_dim)
        v = (x @ self.weights[f"{p}.self_attn.v_proj.weight"].t()).view(b, t, self.kv_heads, self.head_dim)
        return self.rope(q, positions), self.rope(k, positions), v

    def after_attention(self, h: torch.Tensor, attn: torch.Tensor, layer: int) -> torch.Tensor:
        p = f"model.layers.{layer}"
        h = h + attn @ self.weights[f"{p}.self_attn.o_proj.weight"].t()
        x = self.norm(h, f"{p}.post_attention_layernorm.weight")
        gate = torch.nn.functional.silu(x @ self.weights[f"{p}.mlp.gate_proj.weight"].t())
        up = x @ self.weights[f"{p}.mlp.up_proj.weight"].t()
        return h + (gate * up) @ self.weights[f"{p}.mlp.down_proj.weight"].t()

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h, "model.norm.weight") @ self.weights["lm_head.weight"].t()

    # --- the whole model --------------------------------------------------------------------------------------

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Causal forward over ids [B, T] (no padding): logits [B, T, vocab], fp32."""
        b, t = ids.shape
        ids = ids.to(self.weights["model.embed_tokens.weight"].device)
        h = self.weights["model.embed_tokens.weight"][ids]
        positions = torch.arange(t, device=ids.device).expand(b, t)
        causal = torch.full((t, t), float("-inf"), device=ids.device).triu(1)
        rep = self.heads // self.kv_heads
        for layer in range(self.layers):
            q, k, v = self.qkv(h, layer, positions)
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim) + causal
            attn = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, t, -1)
            h = self.after_attention(h, attn, layer)
        return self.head(h)


class StandInCache:
    """The parts of ExLlamaV2Cache that ExLlamaV2.forward uses: per-layer K/V [B, L, kv_heads, head_dim]."""

    def __init__(self, ref: ReferenceLlama, batch_size: int, max_seq_len: int) -> None:
        self.batch_size, self.max_seq_len, self.current_seq_len = batch_size, max_seq_len, 0
        shape = (batch_size, max_seq_len, ref.kv_heads, ref.head_dim)
        self.key_states = [torch.zeros(shape) for _ in range(ref.layers)]
        self.value_states = [torch.zeros(shape) for _ in range(ref.layers)]


class ExLlamaV2StandIn:
    def __init__(self, ref: ReferenceLlama, attn: Any, params_cls: Any, *, no_sdpa: bool, max_input_len: int = 16) -> None:
        self.ref, self._attn, self._params = ref, attn, params_cls
        self.config = SimpleNamespace(no_sdpa=no_sdpa, attn_logit_softcapping=None, max_input_len=max_input_len)
        self.forward_calls = 0

    def _shim(self, layer: int) -> Any:
        """The attributes `ExLlamaV2Attention._attn_torch` reads from its module."""
        ref = self.ref
        shim = SimpleNamespace(num_key_value_groups=ref.heads // ref.kv_heads, scaling=ref.head_dim**-0.5,
                               sliding_window=0, layer_idx=layer)
        shim.repeat_kv = lambda x, n: x if n == 1 else x[:, :, None].expand(x.shape[0], x.shape[1], n, *x.shape[2:]).reshape(
            x.shape[0], x.shape[1] * n, *x.shape[2:])
        return shim

    def forward(self, input_ids: torch.Tensor, cache: StandInCache, input_mask: torch.Tensor | None = None,
                preprocess_only: bool = False, position_offsets: torch.Tensor | None = None, **_: Any) -> torch.Tensor | None:
        self.forward_calls += 1
        bsz, q_len = input_ids.shape
        step = max(1, self.config.max_input_len // bsz)  # ExLlamaV2.forward: effective_max_input_len
        out = []
        for begin in range(0, q_len, step):
            ids = input_ids[:, begin : begin + step]
            out.append(self._chunk(ids, cache, input_mask, position_offsets))
        return None if preprocess_only else torch.cat(out, dim=1).half()

    def _chunk(self, ids: torch.Tensor, cache: StandInCache, input_mask: torch.Tensor | None,
               offsets: torch.Tensor | None) -> torch.Tensor:
        ref = self.ref
        bsz, q = ids.shape
        past = cache.current_seq_len
        assert past + q <= cache.max_seq_len, "Total sequence length exceeds cache size in model.forward"
        params = self._params(bsz, q, past, input_mask, offsets)
        positions = past + torch.arange(q).expand(bsz, q)
        if offsets is not None:
            positions = (positions + offsets.view(-1, 1)).clamp(min=0)  # rope.cu: sincos_row = max(row, 0)
        h = ref.weights["model.embed_tokens.weight"][ids]
        for layer in range(ref.layers):
            qs, ks, vs = ref.qkv(h, layer, positions)
            cache.key_states[layer][:bsz, past : past + q] = ks
            cache.value_states[layer][:bsz, past : past + q] = vs
            k_all = cache.key_states[layer][:bsz, : past + q].half()
            v_all = cache.value_states[layer][:bsz, : past + q].half()
            attn = self._attn(self._shim(layer), bsz, q, qs.half(), k_all, v_all, params, self.config)
            h = ref.after_attention(h, attn.float(), layer)
        cache.current_seq_len += q
        return ref.head(h)
