"""From the model's raw output to citations ctxqa can stand behind.

Four pure steps (see DESIGN.md):

- `parse(text) -> Parsed`: split the answer from its sources section(s) and read each cited block's
  ``key: value`` lines into a group. Airoboros models write ``Source:`` (model cards) or ``Reference(s):``
  (training prompt) followed by one group of pairs per input block; small models improvise (markdown, bullets,
  inline ``(source: ...)``, ``[B1]``), and output may be truncated, so the parser is forgiving but never invents.
- `resolve(parsed, blocks) -> list[Citation]`: map each group to a block that was really in the prompt, or flag it
  ``unverified``; groups are never dropped silently.
- `verify(answer, citations, blocks)`: a support score per citation.
- `infer(answer, blocks)`: when the model cited nothing, attribute answer sentences to blocks (``inferred``).

`says_unknown(answer)` detects the "I don't know / not in the input" abstention.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from rag.types import Block, Citation

# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


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
_REF_RE = re.compile(r"^\[?\s*(?:block\s*)?b(\d{1,4})\s*\]?$", re.IGNORECASE)
_URL_RE = re.compile(r"^(?:https?|ftp)://\S+$|^www\.\S+$", re.IGNORECASE)

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

KEY_ALIASES: dict[str, str] = {
    "block id": "block",
    "block ref": "block",
    "input": "block",
    "input block": "block",
    "file": "source",
    "filename": "source",
    "file name": "source",
    "path": "source",
    "document": "source",
    "doc": "source",
    "sources": "source",
    "link": "url",
    "uri": "url",
    "website": "url",
    "web": "url",
    "pages": "page",
    "page number": "page",
    "p": "page",
    "pp": "page",
    "published": "date",
    "publication date": "date",
    "authors": "author",
}
# Keys that mean "block" when the value is a block ref ("ref: B2") and "source" otherwise ("reference: a.md").
_AMBIGUOUS_KEYS = frozenset({"ref", "reference", "references", "citation", "id"})
_KNOWN_KEYS = frozenset({"block", "source", "title", "page", "date", "url", "author", "journal", "publisher"})
# Keys that alone make a trailing run of metadata lines a sources section even without a heading.
_IDENTIFYING_KEYS = frozenset({"block", "source", "url"})


def canonical_key(key: str, value: str = "") -> str:
    """The metadata key a cited key stands for ("file" -> "source", "link" -> "url", "ref: B2" -> "block")."""
    if key in _AMBIGUOUS_KEYS:
        return "block" if _REF_RE.match(_strip_md(value)) else "source"
    return KEY_ALIASES.get(key, key)


def _strip_md(s: str) -> str:
    """Remove markdown emphasis/code markers and angle brackets around a key or value."""
    s = re.sub(r"^(?:\*\*|__|\*|_|`)+|(?:\*\*|__|\*|_|`)+$", "", s.strip()).strip()
    if s.startswith("<") and s.endswith(">") and len(s) > 2:
        s = s[1:-1].strip()
    return s


# "**date:** 2021" / "**date**: 2021" / "*date*: 2021" -> "date: 2021"
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
        key = re.sub(r"\s+", " ", _strip_md(m.group("k"))).lower()
        value = _strip_md(m.group("v"))
        if key.startswith(("http", "www")):
            return None
        if value:
            pairs.append((key, value))
    return pairs


def _is_prose_pairs(pairs: list[tuple[str, str]]) -> bool:
    """ "In short: the berries changed colour last year after..." is prose, not metadata."""
    return all(canonical_key(k, v) not in _KNOWN_KEYS for k, v in pairs) and any(
        _SENTENCE_VALUE_RE.search(v) for _, v in pairs
    )


def _bare_group(value: str) -> dict[str, str]:
    """A source given without a key: a block ref, or a source value (file path, URL, title)."""
    value = _strip_md(value).rstrip(".")
    m = _REF_RE.match(value)
    if m:
        return {"block": f"B{int(m.group(1))}"}
    return {"source": value}


def _looks_like_bare_source(line: str) -> bool:
    """Short path/URL/ref-like text: what a model writes under "Source:" when it omits the key."""
    s = _strip_md(_BULLET_RE.sub("", line)).rstrip(".")
    if not s or _NO_SOURCE_RE.search(s):
        return False
    if _REF_RE.match(s) or _URL_RE.match(s):
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
    return _MIDLINE_HEADING_RE.sub("\n", text)


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
                    if not pairs or any(canonical_key(k, v) not in _KNOWN_KEYS for k, v in pairs):
                        all_meta = False
                    else:
                        count += len(pairs)
                        identifying = identifying or any(canonical_key(k, v) in _IDENTIFYING_KEYS for k, v in pairs)
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
        answer = _ANSWER_LABEL_RE.sub("", answer)
        return Parsed(
            answer=answer, groups=_dedupe(self.inline + self.groups), no_source=self.no_source, style=self.style
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


def _dedupe(groups: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Identical groups (same pairs, any order) collapse to their first occurrence."""
    seen: set[frozenset[tuple[str, str]]] = set()
    out = []
    for g in groups:
        sig = frozenset(g.items())
        if g and sig not in seen:
            seen.add(sig)
            out.append(g)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Resolving groups to blocks
# ---------------------------------------------------------------------------------------------------------------


def _norm(s: str) -> str:
    """Case-insensitive, whitespace-normalised, surrounding quotes and trailing punctuation removed."""
    s = re.sub(r"\s+", " ", s).strip().strip("\"'`“”‘’«»").strip()
    return s.rstrip(".,;").casefold()


def _norm_url(s: str) -> str:
    s = _norm(s).strip("<>")
    s = re.sub(r"^[a-z][a-z0-9+.\-]*://", "", s)
    s = re.sub(r"^www\.", "", s)
    return s.rstrip("/")


def _norm_path(s: str) -> str:
    s = _norm(s).replace("\\", "/")
    s = re.sub(r"^file://", "", s)
    return re.sub(r"^\./", "", s).rstrip("/")


def _path_match(cited: str, actual: str) -> bool:
    """Equal paths, or one is a suffix of the other at a "/" boundary (a.md vs docs/a.md)."""
    a, b = _norm_path(cited), _norm_path(actual)
    if not a or not b:
        return False
    if a == b:
        return True
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return long_.endswith("/" + short)


def _pages_of(value: str) -> list[int]:
    """Pages named by a value: "3", "p. 3", "3-4", "3, 5", "pages 3–4". Ranges are expanded (capped)."""
    pages: list[int] = []
    for lo, hi in re.findall(r"(\d+)(?:\s*[-–—]\s*(\d+))?", value):
        a = int(lo)
        b = int(hi) if hi else a
        if b < a or b - a > 1000:
            b = a
        pages.extend(range(a, b + 1))
    return pages


def _block_pages(block: Block) -> list[int]:
    return sorted({p for h in block.hits for p in h.pages})


def _key_match(key: str, cited: str, block: Block) -> bool | None:
    """Tolerant comparison of one cited pair with a block; None when the block has nothing to compare with."""
    ctx = block.context
    if key == "block":
        m = _REF_RE.match(_strip_md(cited))
        return m is not None and f"B{int(m.group(1))}" == block.ref
    if key == "page":
        pages = _block_pages(block)
        cited_pages = _pages_of(cited)
        if not pages or not cited_pages:
            return None
        return set(cited_pages) <= set(pages)
    if key == "url":
        target = ctx.get("url") or ctx.get("source")
        if not target:
            return None
        a, b = _norm_url(cited), _norm_url(target)
        if a == b:
            return True
        # A URL cut short (truncated output) neither confirms nor refutes.
        return None if len(a) >= 4 and b.startswith(a) else False
    if key == "source":
        # Models put a path, a URL or the title under "source"; any of them identifies the block.
        if "source" in ctx and _path_match(cited, ctx["source"]):
            return True
        if "url" in ctx and _norm_url(cited) == _norm_url(ctx["url"]):
            return True
        if "title" in ctx and _norm(cited) == _norm(ctx["title"]):
            return True
        return False if ("source" in ctx or "url" in ctx) else None
    if key == "title":
        if "title" not in ctx:
            return None
        a, b = _norm(cited), _norm(ctx["title"])
        if a == b:
            return True
        short, long_ = (a, b) if len(a) < len(b) else (b, a)
        return len(short) >= 8 and short in long_  # a shortened title still names the document
    if key == "date":
        if "date" not in ctx:
            return None
        a, b = _norm(cited), _norm(ctx["date"])
        return a == b or (len(a) >= 10 and b.startswith(a)) or (len(b) >= 10 and a.startswith(b))
    if key not in ctx:
        return None
    return _norm(cited) == _norm(ctx[key])


# Keys that name a document: if one of them contradicts a block, the group cannot be citing that block.
_STRONG_KEYS = frozenset({"block", "source", "url", "title"})


@dataclass
class _Score:
    block: Block
    matched: int
    mismatched: int
    strong_mismatch: bool
    unknown: int
    exact: bool


def _score(group: dict[str, str], block: Block) -> _Score:
    matched = mismatched = unknown = 0
    strong_mismatch = False
    exact = all(block.context.get(k) == v for k, v in group.items())
    for raw_key, value in group.items():
        key = canonical_key(raw_key, value)
        # A block ref was already tried (and names no block of the prompt): it neither confirms nor refutes.
        ok = None if key == "block" else _key_match(key, value, block)
        if ok is None:
            unknown += 1
        elif ok:
            matched += 1
        else:
            mismatched += 1
            strong_mismatch = strong_mismatch or key in _STRONG_KEYS
    return _Score(block, matched, mismatched, strong_mismatch, unknown, exact)


def _citation_for(group: dict[str, str], block: Block, match: str) -> Citation:
    pages = _block_pages(block)
    cited_key = next((k for k, v in group.items() if canonical_key(k, v) == "page"), None)
    if cited_key is not None:
        cited = sorted(set(_pages_of(group[cited_key])))
        if cited and set(cited) <= set(pages):
            pages = cited
    first = block.hits[0]
    return Citation(
        status="verified",
        raw=dict(group),
        block_ref=block.ref,
        chunk_ids=block.chunk_ids,
        document_id=block.document_id,
        source=first.source,
        title=first.title,
        pages=pages,
        char_start=min(h.char_start for h in block.hits),
        char_end=max(h.char_end for h in block.hits),
        match=match,
    )


def _refs_in(group: dict[str, str]) -> list[str] | None:
    """Block refs named by the group's block key ("B1", "B1, B3"), or None when it names none."""
    for k, v in group.items():
        if canonical_key(k, v) == "block":
            refs = [f"B{int(n)}" for n in re.findall(r"(?:\bblock\s*|\bb\s*)(\d{1,4})\b", v, re.IGNORECASE)]
            if not refs and re.fullmatch(r"\s*\d{1,4}\s*", v):
                refs = [f"B{int(v)}"]
            return refs or None
    return None


def _pick(candidates: list[_Score], answer: str) -> Block | None:
    """Break a tie between equally good blocks by which one supports the answer best; None if still tied."""
    if len(candidates) == 1:
        return candidates[0].block
    ranked = sorted(candidates, key=lambda s: _support(answer, s.block), reverse=True)
    top, second = _support(answer, ranked[0].block), _support(answer, ranked[1].block)
    if top > second:
        return ranked[0].block
    # Same support: blocks of one document are interchangeable as a citation of it (take the best-ranked one);
    # blocks of different documents are genuinely ambiguous.
    if len({s.block.document_id for s in candidates}) == 1:
        return candidates[0].block
    return None


def _resolve_group(group: dict[str, str], blocks: Sequence[Block], answer: str) -> list[Citation]:
    by_ref = {b.ref: b for b in blocks}
    refs = _refs_in(group)
    if refs:
        found = [by_ref[r] for r in refs if r in by_ref]
        if found:
            # Refs we never gave ("block: B1, B9") are kept, flagged, rather than silently dropped.
            missing = [Citation(status="unverified", raw={"block": r}) for r in refs if r not in by_ref]
            return [_citation_for(group, b, "ref") for b in found] + missing
        # A block ref we never gave: fall through, the other keys may still identify a block.

    scores = [_score(group, b) for b in blocks]
    exact = [s for s in scores if s.exact]
    if exact:
        block = _pick(exact, answer)
        if block is not None:
            return [_citation_for(group, block, "exact")]
    tolerant = [s for s in scores if s.matched and not s.mismatched and not s.unknown]
    if tolerant:
        block = _pick(tolerant, answer)
        if block is not None:
            return [_citation_for(group, block, "tolerant")]
    partial = [s for s in scores if s.matched and not s.strong_mismatch and s.matched > s.mismatched]
    if partial:
        best = max((s.matched, -s.mismatched) for s in partial)
        top = [s for s in partial if (s.matched, -s.mismatched) == best]
        block = _pick(top, answer)
        if block is not None:
            return [_citation_for(group, block, "partial")]
        return [Citation(status="unverified", raw=dict(group), match="ambiguous")]
    return [Citation(status="unverified", raw=dict(group))]


def resolve(parsed: Parsed, blocks: list[Block]) -> list[Citation]:
    """Map every cited group to the block(s) it names, in this order of trust:

    1. ``ref``: the group's ``block: Bn`` names a block of the prompt (several refs give several citations);
    2. ``exact``: every pair equals the block's BEGINCONTEXT pair byte-for-byte;
    3. ``tolerant``: every pair matches after normalisation (case, whitespace, quotes, URL scheme/www/trailing
       slash, source path suffix at a "/" boundary, cited page inside the block's pages, ISO date prefix);
    4. ``partial``: some pairs match, more match than contradict, and no document-naming key (block, source,
       url, title) contradicts; the block with the most matching pairs wins.
    Ties between blocks go to the block whose text best supports the answer; blocks of the same document with
    equal support resolve to the best-ranked one; otherwise the citation is ambiguous and flagged
    ``unverified`` with ``match="ambiguous"``. A group that matches nothing is ``unverified`` with its raw pairs.
    Identical groups are deduplicated; groups resolving to the same block with non-conflicting pairs are merged.
    """
    out: list[Citation] = []
    for group in _dedupe(parsed.groups):
        for cit in _resolve_group(group, blocks, parsed.answer):
            twin = next(
                (
                    c
                    for c in out
                    if cit.status == "verified"
                    and c.status == "verified"
                    and c.block_ref == cit.block_ref
                    and all(c.raw.get(k, v) == v for k, v in cit.raw.items())
                ),
                None,
            )
            if twin is not None:
                twin.raw.update(cit.raw)
                if twin.pages != cit.pages:
                    twin.pages = sorted(set(twin.pages) | set(cit.pages))
                continue
            out.append(cit)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Support, verification and inference
# ---------------------------------------------------------------------------------------------------------------

STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be been being it its
    this that these those there here which who whom whose what when where why how not no nor so than too very can
    could should would may might must will shall do does did done have has had having i you he she we they them
    his her their our your my me us him also just about into over under out up down any all some such only own
    same both each few more most other s t according input text context block source sources based provided""".split()
)
_TOKEN_RE = re.compile(r"[^\W_]+", re.UNICODE)
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def _stem(tok: str) -> str:
    """A deliberately tiny stemmer: plural/possessive endings only (blueberries ~ blueberry, cats ~ cat)."""
    if len(tok) > 4 and tok.endswith("ies"):
        return tok[:-3] + "y"
    if len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def content_tokens(text: str) -> set[str]:
    """Lower-cased word tokens without stopwords, single letters excepted digits, lightly stemmed."""
    toks = (t.casefold() for t in _TOKEN_RE.findall(text))
    return {_stem(t) for t in toks if t not in STOPWORDS and (len(t) > 1 or t.isdigit())}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s.strip()]


def _block_tokens(block: Block) -> set[str]:
    # The metadata counts as evidence too ("Who wrote it?" -> the author value), the block ref does not.
    meta = " ".join(v for k, v in block.context.items() if k != "block")
    return content_tokens(block.text + " " + meta)


def _sentence_support(sentence: str, block_tokens: set[str]) -> float:
    toks = content_tokens(sentence)
    return len(toks & block_tokens) / len(toks) if toks else 0.0


def _support(answer_text: str, block: Block) -> float:
    """Support of a block for an answer: the best over answer sentences of the fraction of the sentence's
    content tokens (see `content_tokens`) found in the block's text or metadata. In [0, 1].

    Max-over-sentences (rather than over the whole answer) lets each of several cited blocks be credited for
    the part of a multi-source answer it supports.
    """
    btoks = _block_tokens(block)
    return max((_sentence_support(s, btoks) for s in _sentences(answer_text)), default=0.0)


def _block_of(cit: Citation, blocks: Sequence[Block]) -> Block | None:
    for b in blocks:
        if cit.block_ref is not None and b.ref == cit.block_ref:
            return b
    if cit.chunk_ids:
        for b in blocks:
            if set(cit.chunk_ids) <= set(b.chunk_ids):
                return b
    return None


def verify(answer_text: str, citations: Sequence[Citation], blocks: Sequence[Block]) -> list[Citation]:
    """Copies of `citations` with `support` set; statuses are left alone (the caller decides what low support
    means).

    support = max over the answer's sentences of |content(sentence) & content(block)| / |content(sentence)|, where
    content() is the set of lower-cased word tokens minus stopwords, lightly stemmed (`content_tokens`), and the
    block side includes its metadata values. An unverified citation (no block in the prompt) gets 0.0.
    """
    out = []
    for cit in citations:
        block = _block_of(cit, blocks) if cit.status != "unverified" else None
        out.append(replace(cit, support=round(_support(answer_text, block), 4) if block else 0.0))
    return out


def infer(answer_text: str, blocks: Sequence[Block], min_support: float = 0.6) -> list[Citation]:
    """Attribute an uncited answer: each sentence with at least two content tokens goes to the block that
    supports it best, if that support reaches `min_support`. One "inferred" citation per block, in prompt order,
    with the best sentence support as its `support`. Nothing is inferred for an "I don't know" answer."""
    if not blocks or says_unknown(answer_text):
        return []
    best: dict[str, float] = {}
    for sentence in _sentences(answer_text):
        if len(content_tokens(sentence)) < 2:
            continue
        scored = [(_sentence_support(sentence, _block_tokens(b)), -i, b) for i, b in enumerate(blocks)]
        support, _, block = max(scored, key=lambda t: (t[0], t[1]))
        if support >= min_support:
            best[block.ref] = max(best.get(block.ref, 0.0), support)
    out = []
    for block in blocks:
        if block.ref in best:
            cit = _citation_for({}, block, "inferred")
            out.append(replace(cit, status="inferred", raw={}, match=None, support=round(best[block.ref], 4)))
    return out


_DOCS = r"(?:input|context|text|documents?|information|passages?|blocks?|sources?)"
# Each alternative names the *documents* or the *speaker* as lacking the answer, so that ordinary negative facts
# ("The recipe does not contain nuts", "You cannot find them in winter") are not taken for abstentions.
_UNKNOWN_RE = re.compile(
    r"\bI\s+(?:do\s+not|don't|don’t)\s+know\b"
    r"|\b(?:I|we)\s+(?:cannot|can't|can’t|could\s+not|couldn't|am\s+unable\s+to|are\s+unable\s+to|"
    r"was\s+unable\s+to|am\s+not\s+able\s+to)\s+(?:answer|find|determine|say|tell|provide|confirm|locate)"
    r"|\b(?:cannot|can't|can’t|could\s+not)\s+be\s+(?:answered|determined|found)"
    r"|\bnot\s+(?:(?:provided|mentioned|stated|specified|given|included|found|covered|available|present|"
    r"addressed|discussed|described|contained|listed|answered)\s+)?(?:in|within|from)\s+the\s+"
    r"(?:provided\s+|given\s+)?" + _DOCS + r"|\b(?:input|context|text|documents?|information\s+provided|"
    r"provided\s+information|blocks?|passages?|sources?)\s+(?:does\s+not|doesn't|do\s+not|don't|did\s+not)\s+"
    r"(?:contain|provide|mention|say|specify|include|state|give|have|offer|discuss|address)"
    r"|\b(?:there\s+is|there's|there\s+are|contains?|has|have|provides?|gives?)\s+no\s+"
    r"(?:relevant\s+|specific\s+|such\s+)?(?:information|mention|data|details)\b"
    r"|^\W*no\s+(?:relevant\s+|specific\s+)?information\b"
    r"|\b(?:not\s+enough|insufficient)\s+information\b"
    r"|\bthere\s+is\s+nothing\s+(?:in|about)\b",
    re.IGNORECASE,
)


def says_unknown(answer_text: str) -> bool:
    """Whether the answer abstains ("I don't know", "not provided in the input", "cannot be answered from the
    given context", "no information about ...").

    Only the first sentence is checked: an answer that gives facts first and then notes a gap ("... The input
    does not say why.") has answered; an abstaining answer says so up front.
    """
    sentences = _sentences(answer_text.strip())
    return bool(sentences) and bool(_UNKNOWN_RE.search(sentences[0]))
