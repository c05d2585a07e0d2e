"""ExLlamaV2 backend.

Without CUDA, constructing the backend must fail with a clear, actionable GeneratorError: that test runs for
real on CPU machines, and so does the paged mode's request/thread protocol against a stand-in generator (at the
end). The rest needs an NVIDIA GPU and exllamav2 0.3.2 and is skipped elsewhere with the reason: it builds a
random-weight GPTQ Llama with scripts/make_gptq_llama.py (act-order, group size 32, like the airophin/airoboros
GPTQ files) and drives the real backend: greedy generate/stream equality, EOS and stop-string stops, concurrent
requests (batched: they must overlap, and give the answers they give alone), cancellation, the context check,
logits against the pure-torch reference (llama_reference.py), and linear RoPE x2 beyond 4096 positions.
bench/gpu_check.sh runs these on the GPU machine, plus the figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from ctxqa.rag.config import Settings
from ctxqa.rag.generate import (
    Completion,
    ContextOverflowError,
    GeneratorError,
    GenParams,
    backend_status,
    load_generator,
)
from ctxqa.rag.generate.exllamav2 import TokenizerText
from ctxqa.rag.types import Prompt, PromptPart

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_gptq_llama.py"
HAVE_CUDA = torch.cuda.is_available()
HAVE_EXLLAMAV2 = importlib.util.find_spec("exllamav2") is not None


def _gpu_skip_reason() -> str | None:
    if not HAVE_CUDA:
        return f"no CUDA GPU: torch {torch.__version__} reports torch.cuda.is_available() == False"
    if not HAVE_EXLLAMAV2:
        return "no exllamav2: pip install 'ctxqa[gpu]' (exllamav2==0.3.2) on the GPU machine"
    return None


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_gptq_llama", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXQA_CONFIG", str(tmp_path / "absent.toml"))


# --- runs everywhere ------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_CUDA, reason="this machine has CUDA: the no-GPU error path cannot be exercised")
def test_without_cuda_the_backend_refuses_with_a_clear_message(tmp_path: Path) -> None:
    model_dir = tmp_path / "gptq"
    _load_script().build_checkpoint(model_dir, hidden=256, layers=1)
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    with pytest.raises(GeneratorError) as info:
        ExLlamaV2Generator(model_dir)
    message = str(info.value)
    assert "ExLlamaV2 needs an NVIDIA GPU with CUDA; none found" in message
    assert "llm_backend=llama_cpp" in message and "GGUF" in message
    with pytest.raises(GeneratorError, match="needs an NVIDIA GPU"):
        load_generator(Settings(llm_backend="exllamav2", llm_model=str(model_dir)))
    # The refusal happens before exllamav2 is imported (its import would try to compile CUDA code).
    assert "exllamav2" not in sys.modules
    row = next(r for r in backend_status(Settings(llm_backend="exllamav2", llm_model=str(model_dir))) if r["backend"] == "exllamav2")
    assert row["selected"] and not row["ready"] and not row["gpu"] and "NVIDIA GPU" in row["reason"]
    assert row["model_exists"], "the checkpoint itself is a valid exllamav2 model directory"


# --- GPU ------------------------------------------------------------------------------------------------------

gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("gptq") / "tiny-llama-gptq"
    _load_script().build_checkpoint(out, hidden=512, layers=2, group_size=32, act_order=True, dump_reference=True)
    return out


@pytest.fixture(scope="module")
def exl(model_dir: Path) -> Iterator:
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    g = ExLlamaV2Generator(model_dir, context_length=1024, max_batch_size=4)
    yield g
    g.close()


PROMPT = "BEGININPUT\nBEGINCONTEXT\nurl: https://web.site/123\nENDCONTEXT\nBlueberries are now green.\nENDINPUT\n"


def collect(stream: Iterator[str | Completion]) -> tuple[list[str], Completion]:
    *deltas, last = list(stream)
    assert isinstance(last, Completion) and all(isinstance(d, str) and d for d in deltas)
    return deltas, last


@gpu
def test_count_tokens_matches_the_tokenizer_with_bos(exl, model_dir: Path) -> None:
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert exl.count_tokens(PROMPT) == len(tok.encode(PROMPT).ids)  # post-processor adds <s>, like add_bos
    assert exl.count_tokens("<s>" + PROMPT) == exl.count_tokens(PROMPT), "a template-written BOS is not doubled"
    assert exl.context_length == 1024


@gpu
def test_greedy_generate_is_deterministic_and_equals_stream(exl) -> None:
    params = GenParams(max_new_tokens=32)
    a = exl.generate(PROMPT, params)
    b = exl.generate(PROMPT, GenParams(max_new_tokens=32, seed=99))
    assert a.text == b.text and a.completion_tokens == b.completion_tokens
    assert a.prompt_tokens == exl.count_tokens(PROMPT)
    deltas, done = collect(exl.stream(PROMPT, params))
    assert "".join(deltas) == done.text == a.text
    if a.finish_reason == "length":
        assert a.completion_tokens == 32
    assert a.time_prefill > 0 and a.time_generate > 0


@gpu
def test_sampling_with_seed_is_reproducible(exl) -> None:
    p = GenParams(max_new_tokens=24, temperature=0.8, top_p=0.9, top_k=50, seed=3)
    assert exl.generate(PROMPT, p).text == exl.generate(PROMPT, p).text


@gpu
def test_stop_strings_cut_the_output(exl) -> None:
    full = exl.generate(PROMPT, GenParams(max_new_tokens=64)).text
    # A 3-character stop string from the second half of the greedy output, printable ASCII only (random weights
    # can emit lone UTF-8 continuation bytes, which decode to U+FFFD while held).
    start = next((i for i in range(len(full) // 2, len(full) - 3) if full[i : i + 3].isascii() and full[i : i + 3].isprintable()), None)
    assert start is not None, f"need some output to pick a stop string from: {full!r}"
    stop = full[start : start + 3]
    cut = full.find(stop)
    params = GenParams(max_new_tokens=64, stop=[stop])
    c = exl.generate(PROMPT, params)
    assert c.text == full[:cut] and c.finish_reason == "stop"
    deltas, done = collect(exl.stream(PROMPT, params))
    assert "".join(deltas) == done.text == full[:cut]


def _with_eos(src: Path, dst: Path, eos: int) -> Path:
    """The same weights with `eos` as the EOS id: greedy output is identical until that token appears."""
    shutil.copytree(src, dst)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((dst / name).read_text())
        cfg["eos_token_id"] = eos
        (dst / name).write_text(json.dumps(cfg))
    return dst


@gpu
def test_eos_token_stops_generation(exl, model_dir: Path, tmp_path: Path) -> None:
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    req = exl.submit(PROMPT, GenParams(max_new_tokens=40))
    while req.out.get(timeout=60)[0] not in ("done", "error", "cancelled"):
        pass
    ids = req.token_ids
    full = exl.generate(PROMPT, GenParams(max_new_tokens=40)).text
    # First position >= 3 whose token did not occur before: generation must stop exactly there.
    k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    with ExLlamaV2Generator(_with_eos(model_dir, tmp_path / "eos", ids[k]), context_length=1024, max_batch_size=1) as g:
        assert ids[k] in g.eos_ids
        c = g.generate(PROMPT, GenParams(max_new_tokens=40))
    assert c.finish_reason == "stop" and c.completion_tokens == k + 1  # the EOS token is counted
    assert full.startswith(c.text) and len(c.text) < len(full)


@gpu
def test_concurrent_requests_are_batched_and_match_sequential_results(exl) -> None:
    params = GenParams(max_new_tokens=16)
    # Different lengths: batched rows are left-padded, and must still answer exactly as alone.
    prompts = [PROMPT * (1 + i % 3) + f"BEGININSTRUCTION\nQuestion {i}?\nENDINSTRUCTION\n" for i in range(6)]
    expected = [exl.generate(p, params).text for p in prompts]
    before = exl.peak_batch
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = exl.generate(prompts[i], params).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert exl.max_concurrency == 4
    # The requests ran together, not one after another (paged jobs or one static batch, either way).
    assert exl.peak_batch >= 2 and exl.peak_batch > before, (exl.paged, exl.peak_batch)
    # No cross-talk between batched jobs: each answer is its own prompt's answer. Exact equality is required for
    # most of them; batched fp16 kernels may legitimately flip a late greedy near-tie of this random-weight model,
    # so one answer is allowed to diverge after a shared start.
    assert all(results.get(i) is not None for i in range(len(prompts)))
    exact = sum(results[i] == expected[i] for i in range(len(prompts)))
    assert exact >= len(prompts) - 1, (results, expected)
    for i in range(len(prompts)):
        shared = len(os.path.commonprefix([results[i], expected[i]]))
        assert shared >= min(8, len(expected[i])), (i, results[i], expected[i])


@gpu
def test_cancellation_and_abandoned_streams(exl) -> None:
    cancel = threading.Event()
    seen: list[str] = []
    done = None
    for item in exl.stream(PROMPT, GenParams(max_new_tokens=500), cancel=cancel):
        if isinstance(item, Completion):
            done = item
            break
        seen.append(item)
        if len(seen) == 2:
            cancel.set()
    assert done is not None and done.finish_reason == "cancelled" and done.completion_tokens < 500
    assert done.text == "".join(seen)
    stream = exl.stream(PROMPT, GenParams(max_new_tokens=500))
    next(stream)
    stream.close()  # the job is dropped; the generator keeps serving
    assert exl.generate(PROMPT, GenParams(max_new_tokens=4)).completion_tokens == 4


@gpu
def test_context_overflow_is_checked_before_enqueue(exl) -> None:
    long_prompt = "word " * 3000
    with pytest.raises(ContextOverflowError):
        exl.generate(long_prompt, GenParams(max_new_tokens=8))
    with pytest.raises(ContextOverflowError):
        exl.stream(long_prompt, GenParams(max_new_tokens=8))
    n = exl.count_tokens(PROMPT)
    with pytest.raises(ContextOverflowError):
        exl.generate(PROMPT, GenParams(max_new_tokens=exl.context_length - n + 1))


@gpu
def test_quantized_cache_loads_and_generates(model_dir: Path) -> None:
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    with ExLlamaV2Generator(model_dir, context_length=1024, cache="q4", max_batch_size=2) as g:
        assert g.plan.batch_size == 2 and g.cache_tokens >= 1024
        assert g.generate(PROMPT, GenParams(max_new_tokens=8)).completion_tokens == 8


def _exl_logits(model_dir: Path, ids: torch.Tensor, max_seq_len: int, rope_scale: float | None = None) -> torch.Tensor:
    """All-position logits from the real ExLlamaV2 model, configured the way the backend configures it."""
    from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config

    from ctxqa.rag.generate.exl_support import configure_attention
    from ctxqa.rag.generate.exllamav2 import flash_attn_paged_available

    config = ExLlamaV2Config(str(model_dir))
    config.max_seq_len = max_seq_len
    if rope_scale is not None:
        config.scale_pos_emb = rope_scale
    config.arch_compat_overrides()
    configure_attention(config, flash_attn=flash_attn_paged_available())
    model = ExLlamaV2(config)
    cache = ExLlamaV2Cache(model, max_seq_len=max_seq_len, lazy=True)
    model.load_autosplit(cache, progress=False)
    try:
        return model.forward(ids, cache).float().cpu()  # in chunks of max_input_len, logits for every position
    finally:
        model.unload()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@gpu
def test_logits_match_the_pure_torch_reference(model_dir: Path) -> None:
    """The GPTQ packing convention as ExLlamaV2's CUDA kernels read it (zero offset, nibble order, act-order
    g_idx) agrees with the independent pure-torch dequantisation: same logits up to fp16 noise."""
    from tests.rag.generate.llama_reference import ReferenceLlama

    ids = torch.randint(3, 512, (1, 48), generator=torch.Generator().manual_seed(0))
    exl = _exl_logits(model_dir, ids, 256)
    ref = ReferenceLlama.load(model_dir).to("cuda").logits(ids).cpu()
    corr = _corr(exl, ref)
    assert corr > 0.999, f"logit correlation {corr:.5f}: the kernels read the weights differently"
    agree = (exl.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.9, f"argmax agreement {agree:.2f}"


@pytest.fixture(scope="module")
def rope_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("gptq-rope") / "tiny-llama-4k"
    # A 4096-position model, stretched to 8192 by linear RoPE x2 (airophin's recipe). attn_gain 2 makes the
    # attention sharp enough that positions change the logits (scaled vs unscaled differ clearly).
    _load_script().build_checkpoint(out, hidden=512, layers=2, group_size=32, act_order=True, max_position=4096,
                                    attn_gain=2.0, seed=11)
    return out


@gpu
def test_linear_rope_x2_beyond_4096_positions(rope_dir: Path) -> None:
    """Positions 4096..6143 exist only through the x2 interpolation: there ExLlamaV2 must match a scale-2
    reference, and must not match the unscaled one."""
    from tests.rag.generate.llama_reference import ReferenceLlama

    ids = torch.randint(3, 512, (1, 6144), generator=torch.Generator().manual_seed(2))
    exl = _exl_logits(rope_dir, ids, 8192, rope_scale=2.0)[0, 4096:]
    scaled = ReferenceLlama.load(rope_dir, rope_scale=2.0).to("cuda").logits(ids)[0, 4096:].cpu()
    unscaled = ReferenceLlama.load(rope_dir, rope_scale=1.0).to("cuda").logits(ids)[0, 4096:].cpu()
    assert _corr(exl, scaled) > 0.995, _corr(exl, scaled)
    assert (exl.argmax(-1) == scaled.argmax(-1)).float().mean().item() > 0.8
    assert _corr(exl, unscaled) < 0.95, "the logits do not depend on the RoPE scale: the control is too weak"


@gpu
def test_a_full_8192_context_request_completes_and_one_more_token_overflows(rope_dir: Path) -> None:
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    with ExLlamaV2Generator(rope_dir, context_length=8192, rope_scale=2.0, max_batch_size=1) as g:
        assert g.context_length == 8192 and g._model.config.scale_pos_emb == 2.0
        words = " ".join(f"word{i % 97}" for i in range(12000))
        lo, hi = 0, len(words)  # the longest prefix with exactly <= 8192 - 64 tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if g.count_tokens(words[:mid]) <= 8192 - 64 else (lo, mid - 1)
        prompt = words[:lo]
        n = g.count_tokens(prompt)
        assert n > 8000
        c = g.generate(prompt, GenParams(max_new_tokens=8192 - n))
        assert c.prompt_tokens == n and c.prompt_tokens + c.completion_tokens <= 8192
        with pytest.raises(ContextOverflowError, match="exceeds the context length"):
            g.generate(prompt, GenParams(max_new_tokens=8192 - n + 1))


# --- the request/thread protocol, on CPU -------------------------------------------------------------------------
# The real ExLlamaV2DynamicGenerator cannot run here (no CUDA), so these tests drive the backend's submit queue,
# generator thread, cancellation and stop handling against a stand-in that reproduces the result dicts of
# exllamav2 0.3.2's iterate() (generator/dynamic.py, ExLlamaV2DynamicJob.receive_sample): text held while it may
# start a stop string, stop strings excluded, stop tokens ending the job with the held text under "held".

EOS = 2
PIECES = ["<unk>", "<s>", ""] + [chr(c) for c in range(32, 127)]  # id -> piece; EOS decodes to "" (special)


class FakePlain:
    """Stands in for the tokenizers.Tokenizer that encodes text runs: one id per printable character."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[PIECES.index(c) if c in PIECES[3:] else 0 for c in text])


def fake_text() -> TokenizerText:
    return TokenizerText(specials={"<s>": 1}, plain=FakePlain(), bos_id=1, add_bos=True, pieces=PIECES,
                         decode=lambda ids: "".join(PIECES[i] for i in ids), pad_id=0)


class FakeSettings:
    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    @staticmethod
    def greedy() -> FakeSettings:
        return FakeSettings(greedy=True)


class FakeSampler:
    Settings = FakeSettings


class FakeJob:
    def __init__(self, input_ids, max_new_tokens, gen_settings, seed, stop_conditions, decode_special_tokens) -> None:
        self.input_ids, self.max_new_tokens, self.gen_settings, self.seed = input_ids, max_new_tokens, gen_settings, seed
        self.stop_tokens = {s for s in stop_conditions if isinstance(s, int)}
        self.stop_strings = [s for s in stop_conditions if isinstance(s, str)]
        self.identifier = None
        prompt = "".join(PIECES[i] for i in input_ids[0].tolist() if i > 2)
        answer = prompt.split("Q:", 1)[-1]  # the "model" answers with whatever follows "Q:" in the prompt
        self.script = [PIECES.index(c) for c in answer] + [EOS] + [PIECES.index("x")] * 1000
        self.n, self.held, self.held_ids = 0, "", []


class FakeDynamicGenerator:
    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.pending: list[FakeJob] = []
        self.active: list[FakeJob] = []
        self.active_jobs = self.active  # the name exllamav2's generator uses
        self.cancelled: list[FakeJob] = []
        self.max_active = 0
        self.enqueued = 0

    def enqueue(self, job: FakeJob) -> None:
        if job.input_ids.shape[-1] > 500:
            raise AssertionError("Job requires 3 pages (only 2 available) and cannot be enqueued")
        self.enqueued += 1
        self.pending.append(job)

    def cancel(self, job: FakeJob) -> None:
        self.cancelled.append(job)
        for jobs in (self.pending, self.active):
            if job in jobs:
                jobs.remove(job)

    def clear_queue(self) -> None:
        self.pending.clear()
        self.active.clear()

    def num_remaining_jobs(self) -> int:
        return len(self.pending) + len(self.active)

    def iterate(self) -> list[dict]:
        import time

        while self.pending and len(self.active) < self.max_batch_size:
            self.active.append(self.pending.pop(0))
        self.max_active = max(self.max_active, len(self.active))
        time.sleep(0.002)  # a "forward pass": lets requests overlap
        results = []
        for job in list(self.active):
            tok = job.script[job.n]
            job.n += 1
            job.held += PIECES[tok]
            job.held_ids.append(tok)
            r = {"job": job, "stage": "streaming", "eos": False, "identifier": job.identifier}
            end = {"eos": True, "new_tokens": job.n, "time_prefill": 0.01, "time_generate": 0.02}
            ids = torch.tensor([job.held_ids])
            hits = [i for i in (job.held.find(s) for s in job.stop_strings) if i >= 0]
            if tok in job.stop_tokens:
                r.update(end, eos_reason="stop_token", eos_triggering_token_id=tok, held={"text": job.held, "token_ids": ids})
            elif job.n >= job.max_new_tokens:
                r.update(end, eos_reason="max_new_tokens", text=job.held, token_ids=ids)
            elif hits:
                r.update(end, eos_reason="stop_string", text=job.held[: min(hits)], token_ids=ids)
            elif any(job.held.endswith(s[:k]) for s in job.stop_strings for k in range(1, len(s))):
                results.append(r)  # hold: may be the start of a stop string
                continue
            else:
                r.update(text=job.held, token_ids=ids)
            job.held, job.held_ids = "", []
            if r["eos"]:
                self.active.remove(job)
            results.append(r)
        return results


@pytest.fixture()
def fake() -> Iterator:
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    g = object.__new__(ExLlamaV2Generator)  # skip model loading; everything after it is real
    g.name, g._Job, g._Sampler = "fake", FakeJob, FakeSampler
    g._start(FakeDynamicGenerator(max_batch_size=4), fake_text(), context_length=600, max_batch_size=4, eos={EOS})
    yield g
    g.close()


def test_protocol_generate_stream_and_eos(fake) -> None:
    c = fake.generate("Q:Paris is nice.", GenParams(max_new_tokens=100))
    assert (c.text, c.finish_reason, c.completion_tokens) == ("Paris is nice.", "stop", len("Paris is nice.") + 1)
    assert c.prompt_tokens == fake.count_tokens("Q:Paris is nice.") == 1 + len("Q:Paris is nice.")
    deltas, done = collect(fake.stream("Q:Paris is nice.", GenParams(max_new_tokens=100)))
    assert "".join(deltas) == done.text == c.text and len(deltas) > 1
    # A template that writes "<s>" gets that one BOS token, not a second one added before it.
    assert fake._encode(Prompt.template("<s>Q:x")).tolist() == [[1] + [PIECES.index(c) for c in "Q:x"]]
    # In a data part "<s>" is text, and the BOS is added.
    data = Prompt((PromptPart("<s>Q:x", data=True),))
    assert fake._encode(data).tolist() == [[1] + [PIECES.index(c) for c in "<s>Q:x"]]


def test_protocol_stop_strings_length_and_held_text_at_eos(fake) -> None:
    c = fake.generate("Q:Paris. USER: more", GenParams(max_new_tokens=100, stop=["USER:"]))
    assert (c.text, c.finish_reason) == ("Paris. ", "stop")
    # "US" is held as a possible "USER:" when EOS arrives: it is real output and must not be lost.
    c = fake.generate("Q:ok US", GenParams(max_new_tokens=100, stop=["USER:"]))
    assert (c.text, c.finish_reason) == ("ok US", "stop")
    c = fake.generate("Q:abcdef", GenParams(max_new_tokens=3))
    assert (c.text, c.finish_reason, c.completion_tokens) == ("abc", "length", 3)
    job_settings = []
    req = fake.submit("Q:a", GenParams(max_new_tokens=5, stop=["X"]))
    job_settings.append(req.job.gen_settings.kwargs)
    assert sorted(req.job.stop_tokens) == [EOS] and req.job.stop_strings == ["X"] and req.job.seed == 0
    req = fake.submit("Q:a", GenParams(max_new_tokens=5, temperature=0.7, top_p=0.9, top_k=20, seed=4))
    job_settings.append(req.job.gen_settings.kwargs)
    assert job_settings == [
        {"greedy": True},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.0, "token_repetition_penalty": 1.0},
    ]


def test_protocol_concurrent_requests_are_batched(fake) -> None:
    answers = [f"answer number {i}" for i in range(8)]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = fake.generate(f"Q:{answers[i]}", GenParams(max_new_tokens=100)).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(answers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [results.get(i) for i in range(len(answers))] == answers
    assert fake._generator.max_active == 4, "jobs ran concurrently, up to max_batch_size"
    assert fake.peak_batch == 4 and fake.max_concurrency == 4


def test_protocol_cancel_abandon_errors_and_close(fake) -> None:
    cancel = threading.Event()
    stream = fake.stream("Q:" + "y" * 100, GenParams(max_new_tokens=400), cancel=cancel)
    first = next(stream)
    cancel.set()
    *rest, done = list(stream)
    assert done.finish_reason == "cancelled" and done.text == first + "".join(rest)
    assert len(fake._generator.cancelled) == 1 and fake._generator.num_remaining_jobs() == 0
    stream = fake.stream("Q:" + "z" * 100, GenParams(max_new_tokens=400))
    next(stream)
    stream.close()
    for _ in range(100):
        if len(fake._generator.cancelled) == 2:
            break
        threading.Event().wait(0.01)
    assert len(fake._generator.cancelled) == 2, "an abandoned stream cancels its job"
    before = fake._generator.enqueued
    with pytest.raises(ContextOverflowError):
        fake.generate("Q:" + "w" * 590, GenParams(max_new_tokens=20))
    assert fake._generator.enqueued == before, "the context check happens before enqueue"
    with pytest.raises(GeneratorError, match="cannot be enqueued"):
        fake.generate("Q:" + "w" * 550, GenParams(max_new_tokens=10))
    assert fake.generate("Q:still fine", GenParams(max_new_tokens=50)).text == "still fine"
    fake.close()
    assert not fake._thread.is_alive()
    with pytest.raises(GeneratorError, match="closed"):
        fake.generate("Q:late", GenParams(max_new_tokens=5))
