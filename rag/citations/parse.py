"""Parse raw model output into the answer text and the cited ``key: value`` groups (pure).

Airoboros models write ``Source:`` (model cards) or ``Reference(s):`` (training prompt) followed by one group of
pairs per input block; small models improvise (markdown, bullets, inline ``(source: ...)``, ``[B1]``), and output
may be truncated, so the parser is forgiving but never invents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ctxqa.rag.citations.keys import IDENTIFYING_KEYS, KNOWN_KEYS, REF_RE, URL_RE, canonical_key, strip_md


@dataclass
class Parsed:
    """The model output split into the answer and the cited groups.

    `style` names how sources were given: the heading word lower-cased without markup ("source", "sources",
    "reference(s)", "references", "reference", "citation(s)", "citations", "citation"), "inline" when only inline
    ``(source: ...)``/``[B1]`` forms were found, "bare" for a trailing run of metadata lines without a heading,
    or None when the output cites nothing.
    """

    answer: str
    groups: list[dict[str, str]] = field(default_factory=list)
    no_source: bool = False
    style: str | None = None


# Special tokens / markers a model may leak at the end (or echo); removed before parsing.
_JUNK_RE = re.compile(
    r"</s>|<s>|<\|im_end\|>|<\|im_start\|>(?:assistant|user|system)?|<\|endoftext\|>|<\|eot_id\|>|"
    r"^\s*(?:BEGIN|END)(?:INPUT|CONTEXT|INSTRUCTION)\s*$",
    re.MULTILINE,
)
# A new conversation turn means the model ran past its answer: cut there.
_TURN_RE = re.compile(r"^\s*(?:USER:|### Instruction:|\[INST\])", re.MULTILINE)

# "reference(s)" before "references?": the alternation must not stop at "reference" and leave "(s):".
_HEADING_WORD = r"sources?|reference\(s\)|references?|citation\(s\)|citations?"
_HEADING_RE = re.compile(
    rf"""^\s*(?:\#{{1,6}}\s*)?(?:[-*+•]\s+)?      # markdown heading or bullet
        (?:\*\*|__|\*|_)?\s*
        (?P<h>{_HEADING_WORD})
        (?:\s*(?P<num>\d+))?                      # "Source 1:" numbered group headings
        \s*(?:\*\*|__|\*|_)?\s*
        (?P<colon>:)?\s*(?:\*\*|__|\*|_)?\s*
        (?P<rest>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
# A heading that starts mid-line after a sentence ("... green. Source: docs/a.md") is moved to its own line.
# Not after a list number ("2. source: a.md" is a numbered pair, not a sentence end).
_MIDLINE_HEADING_RE = re.compile(
    rf"(?:(?<=[^\d\s][.!?])|(?<=[)\]]))[ \t]+(?=(?:\*\*|__)?(?:{_HEADING_WORD})(?:\*\*|__)?\s*:)", re.IGNORECASE
)
_BULLET_RE = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)]|\(\d{1,2}\)|\[\d{1,2}\])\s+")
_NUMBERED_RE = re.compile(r"^\s*(?:\d{1,2}[.)]|\(\d{1,2}\)|\[\d{1,2}\])\s+")
_GROUP_LABEL_RE = re.compile(
    r"^\s*(?:[-*+•]\s*)?(?:\*\*)?"
    r"(?:\d{1,2}[.)]|\(\d{1,2}\)|\[\d{1,2}\]|(?:group|block|input|document|doc)\s*\d{1,2}\s*:?)"
    r"(?:\*\*)?\s*$",
    re.IGNORECASE,
)
# key: value. Keys are short (1-4 words), start with a letter; the value splits on the FIRST ": " only.
_KEY = r"[A-Za-z][\w\-\.]*(?:[ ][\w\-\.]+){0,3}"
_PAIR_RE = re.compile(rf"^(?P<k>{_KEY})\s*:\s+(?P<v>.*)$")
_PAIR_NOSPACE_RE = re.compile(r"^(?P<k>[A-Za-z][\w\-]*):(?P<v>(?!//)\S.*)$")  # "page:3", never "https://x"
# Split "block: B1, source: a.md; page: 3" into pairs: a separator followed by a one/two-word key and ": ".
_PAIR_SPLIT_RE = re.compile(r"\s*[,;|]\s+(?=[A-Za-z][\w\-]*(?: [A-Za-z][\w\-]*)?\s*:\s)")

# Inline citations inside the answer prose.
_INLINE_PAIRS_RE = re.compile(
    r"[ \t]*[\(\[][ \t]*(?P<body>(?:block|source|sources|ref|reference|url|title|page|pages|date)[ \t]*:[ \t]*"
    r"[^\)\]\n]{1,300}?)[ \t]*[\)\]]",
    re.IGNORECASE,
)
_INLINE_REFS_RE = re.compile(
    r"[ \t]*[\(\[][ \t]*(?P<body>(?:block\s*)?B\d{1,4}(?:\s*[,;&]\s*(?:block\s*)?B\d{1,4})*)\s*[\)\]]"
)

_NO_SOURCE_RE = re.compile(
    r"\bno\s+(?:specific\s+|relevant\s+)?(?:source|reference|citation|metadata)s?(?:\s+information)?\s+"
    r"(?:is\s+|are\s+|was\s+|were\s+)?(?:available|provided|given|found|listed)"
    r"|\b(?:source|reference|citation)s?(?:\s+information)?\s+(?:is|are)\s+(?:not|un)\s*"
    r"(?:available|provided|given|known)"
    r"|\bno\s+(?:source|reference|citation)s?(?:\s+information)?\s*\.?\s*$"
    r"|^\s*(?:n/?a|none|unknown|not\s+available)\s*\.?\s*$",
    re.IGNORECASE,
)


_BOLD_KEY_RE = re.compile(
    r"^(?:\*\*|__|\*|_)\s*([A-Za-z][^*_:\n]{0,40}?)\s*(?::\s*(?:\*\*|__|\*|_)|(?:\*\*|__|\*|_)\s*:)"
)
_SENTENCE_VALUE_RE = re.compile(r"\w+(?:\s+\w+){8,}")


def _split_pairs(line: str) -> list[tuple[str, str]] | None:
    """All ``key: value`` pairs of a line (keys lower-cased), or None when the line is not made of pairs.

    Pairs split on the FIRST ": " (values may hold colons, e.g. URLs); several pairs on one line are separated by
    ", ", "; " or " | " followed by a short key and ": ". Pairs with an empty value are left out.
    """
    parts = _PAIR_SPLIT_RE.split(line.strip())
    pairs: list[tuple[str, str]] = []
    for part in parts:
        part = _BOLD_KEY_RE.sub(r"\1:", part.strip())
        m = _PAIR_RE.match(part) or _PAIR_NOSPACE_RE.match(part)
        if not m:
            return None
        key = re.sub(r"\s+", " ", strip_md(m.group("k"))).lower()
        value = strip_md(m.group("v"))
        if key.startswith(("http", "www")):
            return None
        if value:
            pairs.append((key, value))
    return pairs


def _is_prose_pairs(pairs: list[tuple[str, str]]) -> bool:
    """ "In short: the berries changed colour last year after..." is prose, not metadata."""
    return all(canonical_key(k, v) not in KNOWN_KEYS for k, v in pairs) and any(
        _SENTENCE_VALUE_RE.search(v) for _, v in pairs
    )


def _bare_group(value: str) -> dict[str, str]:
    """A source given without a key: a block ref, or a source value (file path, URL, title)."""
    value = strip_md(value).rstrip(".")
    m = REF_RE.match(value)
    if m:
        return {"block": f"B{int(m.group(1))}"}
    return {"source": value}


def _looks_like_bare_source(line: str) -> bool:
    """Short path/URL/ref-like text: what a model writes under "Source:" when it omits the key."""
    s = strip_md(_BULLET_RE.sub("", line)).rstrip(".")
    if not s or _NO_SOURCE_RE.search(s):
        return False
    if REF_RE.match(s) or URL_RE.match(s):
        return True
    return " " not in s and ("/" in s or bool(re.search(r"\.[A-Za-z][A-Za-z0-9]{0,4}$", s)))


def _clean(text: str) -> str:
    """Normalise newlines, cut a runaway next turn, drop leaked special tokens and echoed markers, and put a
    heading that follows a sentence mid-line on its own line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    m = _TURN_RE.search(text)
    if m:
        text = text[: m.start()]
    text = _JUNK_RE.sub("", text)
    # Output cut short inside a prompt marker it started to echo ("BEGININ" at max_new_tokens): not an answer.
    last = text.rstrip().rsplit("\n", 1)[-1].strip()
    if len(last) >= 3 and any(m.startswith(last) for m in _MARKERS):
        text = text.rstrip()[: -len(last)]
    return _MIDLINE_HEADING_RE.sub("\n", text)


_MARKERS = ("BEGININPUT", "BEGINCONTEXT", "ENDCONTEXT", "ENDINPUT", "BEGININSTRUCTION", "ENDINSTRUCTION")


def _drop_repeats(answer: str) -> str:
    """Keep the first of identical paragraphs: small models loop ("X. X. X." as whole paragraphs), and a
    repeated paragraph adds nothing to check or to read."""
    seen: set[str] = set()
    out = []
    for para in re.split(r"\n[ \t]*\n", answer):
        key = " ".join(para.split()).casefold()
        if key and key in seen:
            continue
        seen.add(key)
        out.append(para)
    return "\n\n".join(out).strip()


def _extract_inline(line: str, groups: list[dict[str, str]]) -> str:
    """Pull ``(source: ..., page: 3)``, ``[source: ...]`` and ``[B1]`` forms out of an answer line."""

    def pairs_repl(m: re.Match[str]) -> str:
        pairs = _split_pairs(m.group("body"))
        if not pairs:
            return m.group(0)
        groups.append(dict(pairs))
        return ""

    def refs_repl(m: re.Match[str]) -> str:
        groups.extend({"block": f"B{int(n)}"} for n in re.findall(r"B(\d{1,4})", m.group("body")))
        return ""

    new = _INLINE_REFS_RE.sub(refs_repl, _INLINE_PAIRS_RE.sub(pairs_repl, line))
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", new) if new != line else line


def _is_fragment(line: str) -> bool:
    """A truncated last line: a few words with no sentence end."""
    return len(line.split()) <= 3 and not re.search(r"[.!?]$", line.strip())


def _is_no_source_value(value: str) -> bool:
    return bool(_NO_SOURCE_RE.search(value))


_ANSWER_LABEL_RE = re.compile(r"^(?:\*\*|__)?answer(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_REF_LABEL_RE = re.compile(r"^\s*(?:[-*+•]\s*)?(?:\*\*)?\[?(?:block\s*)?B(\d{1,4})\]?(?:\*\*)?\s*:?\s*(?:\*\*)?$", re.I)


class _SourceReader:
    """Line-by-line state machine behind `parse` (answer prose vs. sources section)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.answer: list[str] = []
        self.groups: list[dict[str, str]] = []
        self.inline: list[dict[str, str]] = []
        self.current: dict[str, str] = {}
        self.no_source = False
        self.style: str | None = None
        self.in_sources = False
        self.after_blank = False

    def flush(self) -> None:
        if self.current:
            self.groups.append(self.current)
        self.current = {}

    def add_pairs(self, pairs: list[tuple[str, str]]) -> None:
        for key, value in pairs:
            if _is_no_source_value(value):  # "source: not available"
                self.no_source = True
                continue
            if key in self.current:  # a repeated key starts the next block's group
                self.flush()
            self.current[key] = value

    def _metadata_tails(self) -> list[bool]:
        """tails[i]: every non-blank line from i on is known-key metadata (or a "Block B1:" label), and together
        they hold a block/source/url pair or at least two pairs. Computed once, backwards (linear time)."""
        tails = [False] * (len(self.lines) + 1)
        all_meta, count, identifying = True, 0, False
        for i in range(len(self.lines) - 1, -1, -1):
            line = self.lines[i]
            if line.strip() and all_meta:
                if _REF_LABEL_RE.match(line):
                    count, identifying = count + 1, True
                else:
                    pairs = _split_pairs(_BULLET_RE.sub("", line))
                    if not pairs or any(canonical_key(k, v) not in KNOWN_KEYS for k, v in pairs):
                        all_meta = False
                    else:
                        count += len(pairs)
                        identifying = identifying or any(canonical_key(k, v) in IDENTIFYING_KEYS for k, v in pairs)
            tails[i] = all_meta and (count >= 2 or identifying)
        return tails

    @staticmethod
    def _is_source_pair(m: re.Match[str]) -> bool:
        """Inside a sources section, "source: a.md" (singular word, plain value) is a pair of the current group,
        not a new heading: "block: B1\nsource: a.md" is one group."""
        rest = m.group("rest").strip()
        word = m.group("h").lower()
        return (
            bool(rest)
            and word in ("source", "reference", "citation")
            and not m.group("num")
            and not _is_no_source_value(rest)
            and _split_pairs(rest) is None
        )

    def heading(self, m: re.Match[str]) -> None:
        self.flush()
        self.in_sources, self.after_blank = True, False
        self.style = self.style or m.group("h").lower()
        rest = m.group("rest").strip()
        if not rest:
            return
        if _is_no_source_value(rest):
            self.no_source = True
        elif (pairs := _split_pairs(rest)) is not None:
            self.add_pairs(pairs)
        else:
            # "Source: docs/a.md" opens a group that the following pairs ("page: 3") complete.
            self.current = _bare_group(rest)

    def answer_line(self, line: str) -> None:
        stripped = line.strip()
        if (
            stripped
            and _is_no_source_value(stripped)
            and re.match(
                r"^\W*(?:there\s+is\s+|there's\s+)?no\s+(?:source|reference|citation|metadata)", stripped, re.I
            )
        ):
            self.no_source = True  # a standalone "No source information is available." line
            return
        self.answer.append(_extract_inline(line, self.inline))

    def source_line(self, i: int, line: str) -> None:
        stripped = line.strip()
        if not stripped:
            self.flush()
            self.after_blank = True
            return
        if _GROUP_LABEL_RE.match(stripped):
            self.flush()
            return
        if m := _REF_LABEL_RE.match(stripped):
            self.flush()
            self.current = {"block": f"B{int(m.group(1))}"}
            return
        if _is_no_source_value(stripped) and len(stripped.split()) <= 12:
            self.no_source = True
            return
        body = _BULLET_RE.sub("", line)
        pairs = _split_pairs(body)
        if pairs is not None and not _is_prose_pairs(pairs):
            if _NUMBERED_RE.match(line):
                self.flush()  # "1. date: ..." numbers a new group
            self.add_pairs(pairs)
            self.after_blank = False
            return
        if _looks_like_bare_source(line):
            self.flush()
            self.current = _bare_group(body)
            self.flush()
            return
        # Prose: the sources section is over (a truncated last fragment is dropped instead).
        self.flush()
        if i == len(self.lines) - 1 and not self.after_blank and _is_fragment(stripped):
            return
        self.in_sources = False
        if self.after_blank and self.answer and self.answer[-1].strip():
            self.answer.append("")
        self.answer_line(line)

    def run(self) -> Parsed:
        tails = self._metadata_tails()
        for i, line in enumerate(self.lines):
            m = _HEADING_RE.match(line)
            if m and not m.group("colon") and m.group("rest").strip():
                m = None  # "Sources say that..." is prose, not a heading
            if m and self.in_sources and self._is_source_pair(m):
                self.add_pairs(list(_bare_group(m.group("rest")).items()))
                self.after_blank = False
            elif m:
                self.heading(m)
            elif self.in_sources:
                self.source_line(i, line)
            elif line.strip() and tails[i]:
                self.in_sources, self.after_blank = True, False
                self.style = self.style or "bare"
                self.source_line(i, line)
            else:
                self.answer_line(line)
        self.flush()
        if self.inline and self.style is None:
            self.style = "inline"
        answer = re.sub(r"\n{3,}", "\n\n", "\n".join(self.answer)).strip()
        answer = _drop_repeats(_ANSWER_LABEL_RE.sub("", answer))
        return Parsed(
            answer=answer, groups=dedupe(self.inline + self.groups), no_source=self.no_source, style=self.style
        )


def parse(text: str) -> Parsed:
    """Split raw model output into the answer text and the cited ``key: value`` groups.

    Handles: headings Source(s)/Reference(s)/References/Citation(s) with or without markdown emphasis, on their
    own line or followed by the first pair or a bare value; bullets and numbered groups; groups separated by
    blank lines, group labels, or the repetition of a key; several pairs on one line; inline ``(source: ...)``,
    ``[source: ...]`` and ``[B1]`` citations (removed from the answer); "no source information is available";
    a trailing run of metadata lines without heading; truncation; prose after the sources; leaked special
    tokens. Keys are lower-cased as written (aliases are resolved later, in `resolve`).
    """
    return _SourceReader(_clean(text).split("\n")).run()


def dedupe(groups: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Identical groups (same pairs, any order) collapse to their first occurrence."""
    seen: set[frozenset[tuple[str, str]]] = set()
    out = []
    for g in groups:
        sig = frozenset(g.items())
        if g and sig not in seen:
            seen.add(sig)
            out.append(g)
    return out
