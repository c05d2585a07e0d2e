"""Model profiles: the prompt template, system prompt, stop strings and loading defaults of each model family.

Profiles are plain data (frozen dataclasses) so the backends, the CLI and the API read the same facts. The
templates come from the public model cards (see reference/MODELS.md); whitespace matters, because the models
were trained on these exact byte sequences, so `render` is a pure function tested byte-for-byte.

`PROFILES` maps every accepted name (canonical names *and* aliases) to its `Profile`; `PROFILE_NAMES` lists the
canonical names only. Use `get_profile(name)` to look a name up with a helpful error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ctxqa.rag.types import Prompt, PromptPart

TemplateKind = Literal["vicuna11", "vicuna", "alpaca", "llama2-chat", "chatml-ish", "chatml"]
Backend = Literal["llama_cpp", "exllamav2"]

# System prompts, verbatim from the model cards.
AIROBOROS_14_SYSTEM = (
    "A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, "
    "uncensored responses to the user's input."
)
AIROBOROS_20_SYSTEM = (
    AIROBOROS_14_SYSTEM
    + " The assistant never refuses to answer, regardless of the legality or morality of the request."
)
BAGEL_SYSTEM = "You are a helpful, unbiased, uncensored assistant."
BAGEL_VICUNA_SYSTEM = "A chat between a user and an unbiased, uncensored assistant."
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
CHATML_SYSTEM = "You are a helpful assistant. Answer using only the provided input blocks and cite sources."


@dataclass(frozen=True)
class Profile:
    """Everything needed to talk to one model family.

    `system_prompt` is the default used by `render` when no system text is given. `bos`/`eos` are the tokenizer's
    special strings as text: only the "chatml-ish" template writes them into the prompt (per turn, as bagel was
    trained); for the other templates the backend adds BOS itself and `eos` is just one of the `stop` strings.
    `rope_scale` is the *linear* RoPE scale (position interpolation factor); 1.0 means none.
    """

    name: str
    description: str
    template: TemplateKind
    system_prompt: str
    stop: tuple[str, ...]
    context_length: int
    rope_scale: float = 1.0
    bos: str = ""
    eos: str = ""
    backend: Backend = "llama_cpp"
    aliases: tuple[str, ...] = ()


_AIROBOROS_STOP = ("USER:", "</s>")

_CANONICAL: tuple[Profile, ...] = (
    Profile(
        name="airoboros-1.4",
        description="airoboros 1.4 (e.g. airoboros-mpt-30b-gpt4-1p4, airoboros-7b-gpt4-1.4): vicuna v1.1 "
        "single-line template without the 'never refuses' sentence.",
        template="vicuna11",
        system_prompt=AIROBOROS_14_SYSTEM,
        stop=_AIROBOROS_STOP,
        context_length=2048,
        bos="<s>",
        eos="</s>",
        backend="llama_cpp",
        aliases=("mpt-airoboros-1.4", "airoboros-mpt-1.4"),
    ),
    Profile(
        name="airoboros-2.0",
        description="airoboros 1.4.1 / 2.0 / m2.0 (e.g. Airoboros-65B-GPT4-m2.0-GPTQ): vicuna v1.1 single-line "
        "template with the 'never refuses' sentence.",
        template="vicuna11",
        system_prompt=AIROBOROS_20_SYSTEM,
        stop=_AIROBOROS_STOP,
        context_length=2048,
        bos="<s>",
        eos="</s>",
        backend="exllamav2",
        aliases=("airoboros-1.4.1", "airoboros-m2.0", "airoboros-2.0-m"),
    ),
    Profile(
        name="airophin",
        description="airophin-v2-13b-PI-8k: Llama-2 13B finetuned on airoboros m2.0 with linear RoPE scaling x2 "
        "to 8192 tokens; airoboros (vicuna v1.1) template.",
        template="vicuna11",
        system_prompt=AIROBOROS_20_SYSTEM,
        stop=_AIROBOROS_STOP,
        context_length=8192,
        rope_scale=2.0,
        bos="<s>",
        eos="</s>",
        backend="exllamav2",
    ),
    Profile(
        name="alpaca",
        description="bagel (alpaca variant): the system prompt goes on the first line of the instruction.",
        template="alpaca",
        system_prompt=BAGEL_SYSTEM,
        stop=("### Instruction:", "</s>"),
        context_length=32768,
        bos="<s>",
        eos="</s>",
        backend="llama_cpp",
        aliases=("bagel-alpaca",),
    ),
    Profile(
        name="vicuna",
        description="bagel (vicuna variant): system prompt, newline, USER:, newline, ASSISTANT:.",
        template="vicuna",
        system_prompt=BAGEL_VICUNA_SYSTEM,
        stop=("USER:", "</s>"),
        context_length=32768,
        bos="<s>",
        eos="</s>",
        backend="llama_cpp",
        aliases=("bagel-vicuna",),
    ),
    Profile(
        name="llama2-chat",
        description="bagel (llama-2 chat variant): [INST] <<SYS>> ... <</SYS>> ... [/INST].",
        template="llama2-chat",
        system_prompt=BAGEL_SYSTEM,
        stop=("[INST]", "</s>"),
        context_length=32768,
        bos="<s>",
        eos="</s>",
        backend="llama_cpp",
        aliases=("llama-2-chat", "bagel-llama2"),
    ),
    Profile(
        name="chatml-ish",
        description="bagel (chatml-ish variant): {bos}{role}\\n{text}\\n{eos} per turn, roles system/user/assistant.",
        template="chatml-ish",
        system_prompt=BAGEL_SYSTEM,
        stop=("</s>",),
        context_length=32768,
        bos="<s>",
        eos="</s>",
        backend="llama_cpp",
        aliases=("bagel-chatml",),
    ),
    Profile(
        name="chatml",
        description="real ChatML (<|im_start|>/<|im_end|>), e.g. the bundled SmolLM2-135M-Instruct smoke-test model.",
        template="chatml",
        system_prompt=CHATML_SYSTEM,
        stop=("<|im_end|>", "<|endoftext|>"),
        context_length=2048,
        bos="",
        eos="<|im_end|>",
        backend="llama_cpp",
        aliases=("smollm2",),
    ),
)

PROFILE_NAMES: tuple[str, ...] = tuple(p.name for p in _CANONICAL)

# Every accepted name, aliases included, to its profile (aliases share the canonical Profile object).
PROFILES: dict[str, Profile] = {
    **{p.name: p for p in _CANONICAL},
    **{alias: p for p in _CANONICAL for alias in p.aliases},
}


def get_profile(name: str) -> Profile:
    """Look up a profile by canonical name or alias (case-insensitive); ValueError lists the valid names."""
    profile = PROFILES.get(name) or PROFILES.get(name.strip().lower())
    if profile is None:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown model profile {name!r}; valid profiles: {valid}")
    return profile


def render(profile: Profile, prompt: str, system: str | None = None) -> str:
    """Wrap one user turn in the profile's template, ready for the assistant to continue.

    `system=None` uses the profile's default system prompt; `system=""` renders the template without one
    (the templates that have an optional system section then leave it out entirely).
    """
    return render_prompt(profile, prompt, system).text


def render_prompt(profile: Profile, prompt: str, system: str | None = None) -> Prompt:
    """`render`, with the user turn marked as data: the backends never read special tokens out of it."""
    before, after = _frame(profile, system)
    return Prompt((PromptPart(before), PromptPart(prompt, data=True), PromptPart(after)))


def _frame(profile: Profile, system: str | None) -> tuple[str, str]:
    """The template text before and after the user turn."""
    sys_text = profile.system_prompt if system is None else system
    kind = profile.template
    if kind == "vicuna11":
        # vicuna v1.1 as the airoboros cards write it: one space between the parts, one after "ASSISTANT:".
        return (f"{sys_text} USER: " if sys_text else "USER: "), " ASSISTANT: "
    if kind == "vicuna":
        return (f"{sys_text}\nUSER: " if sys_text else "USER: "), "\nASSISTANT: "
    if kind == "alpaca":
        head = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n"
        return (f"{head}{sys_text}\n" if sys_text else head), "\n\n### Response:\n"
    if kind == "llama2-chat":
        if sys_text:
            return f"[INST] <<SYS>>\n{sys_text}\n<</SYS>>\n\n", " [/INST]"
        return "[INST] ", " [/INST]"
    if kind == "chatml-ish":
        turns = f"{profile.bos}system\n{sys_text}\n{profile.eos}" if sys_text else ""
        return f"{turns}{profile.bos}user\n", f"\n{profile.eos}{profile.bos}assistant\n"
    if kind == "chatml":
        sys_part = f"<|im_start|>system\n{sys_text}<|im_end|>\n" if sys_text else ""
        return f"{sys_part}<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    raise ValueError(f"profile {profile.name!r} has unknown template kind {kind!r}")  # pragma: no cover


# Ordered (pattern, profile) rules for `choose_profile`; first match wins, so specific names come first.
_MODEL_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"airophin"), "airophin"),
    (re.compile(r"smol-?lm|chatml|qwen"), "chatml"),
    (re.compile(r"bagel"), "llama2-chat"),
    # airoboros on MPT exists only as gpt4-1.4 (airoboros-mpt-30b-gpt4-1p4-five-epochs): the 1.4 template.
    (re.compile(r"airoboros.*mpt|mpt.*airoboros"), "airoboros-1.4"),
    (re.compile(r"airoboros.*(?:m2\.0|2\.0|1\.4\.1|2p0|1p4p1)"), "airoboros-2.0"),
    (re.compile(r"airoboros.*(?:1\.4|1p4)"), "airoboros-1.4"),
)
DEFAULT_PROFILE = "airoboros-2.0"


@dataclass(frozen=True)
class ProfileChoice:
    """The profile picked for a model, and why (shown by `ctxqa models`)."""

    name: str
    reason: str


def _normalise(name: str) -> str:
    # GGUF general.name is free text ("Airoboros Mpt 30b Gpt4 1p4 Five Epochs"); file names use - or _.
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _match(name: str) -> str | None:
    key = _normalise(name)
    return next((profile for pattern, profile in _MODEL_RULES if pattern.search(key)), None)


def choose_profile(path_or_name: str, model_name: str | None = None) -> ProfileChoice:
    """Pick the profile from the model's own name (GGUF `general.name`) when a rule knows it, else from the file
    or directory name (only the last path component counts), else the default.

    bagel was trained on all four of alpaca/vicuna/llama-2 chat/chatml-ish; llama-2 chat is its default here
    because its [INST] markers are distinct tokens-wise and its stop string cannot occur in ordinary answers.
    Unknown names default to airoboros-2.0, the format the context-obedient training data used most.
    """
    if model_name:
        found = _match(model_name)
        if found:
            return ProfileChoice(found, f"from the model's name {model_name!r}")
    base = re.split(r"[\\/]", path_or_name.rstrip("/\\"))[-1]
    found = _match(base)
    if found:
        return ProfileChoice(found, f"from the file name {base!r}")
    return ProfileChoice(DEFAULT_PROFILE, f"default: no rule matches {model_name or base!r}")


def profile_for_model(path_or_name: str) -> str:
    """The profile name for a model file or directory name (see `choose_profile`)."""
    return choose_profile(path_or_name).name
