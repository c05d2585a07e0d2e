"""Citations: parsing a table of realistic model outputs, resolving groups to blocks, support and inference."""

from __future__ import annotations

from typing import Any

import pytest

from ctxqa.rag.citations import Parsed, infer, parse, resolve, says_unknown, verify
from ctxqa.rag.prompt import build_blocks
from ctxqa.rag.types import Block, Citation, Hit

# ---------------------------------------------------------------------------------------------------------------
# Parser table: (id, model output, expected answer, expected groups, no_source, style)
# ---------------------------------------------------------------------------------------------------------------

CARD_GROUP = {"date": "2021-01-01", "url": "https://web.site/123"}

PARSE_CASES: list[tuple[str, str, str, list[dict[str, str]], bool, str | None]] = [
    (
        "model-card-expected-answer",
        "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "source",
    ),
    (
        "heading-on-same-line-as-first-pair",
        "Blueberries are now green.\nSource: date: 2021-01-01\nurl: https://web.site/123",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "source",
    ),
    (
        "all-pairs-on-heading-line",
        "Blueberries are now green.\nSource: date: 2021-01-01, url: https://web.site/123",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "source",
    ),
    (
        "airoboros-reference(s)-multi-group",
        "The ticket was closed after the pull request was merged.\n\nReference(s):\ndate: 2023-06-05\n"
        "user: Jack Johnson\npr: 23441\n\ndate: 2023-06-01\nticket: JIRA-4412",
        "The ticket was closed after the pull request was merged.",
        [
            {"date": "2023-06-05", "user": "Jack Johnson", "pr": "23441"},
            {"date": "2023-06-01", "ticket": "JIRA-4412"},
        ],
        False,
        "reference(s)",
    ),
    (
        "sources-plural-with-block-refs",
        "Green.\nSources:\nblock: B1\nsource: news/berries.txt\n\nblock: B2\nsource: papers/botany.pdf",
        "Green.",
        [{"block": "B1", "source": "news/berries.txt"}, {"block": "B2", "source": "papers/botany.pdf"}],
        False,
        "sources",
    ),
    (
        "references-heading",
        "Green.\nReferences:\nurl: https://web.site/123",
        "Green.",
        [{"url": "https://web.site/123"}],
        False,
        "references",
    ),
    (
        "reference-singular-heading",
        "Green.\nReference:\ndate: 2021-01-01",
        "Green.",
        [{"date": "2021-01-01"}],
        False,
        "reference",
    ),
    (
        "citation(s)-heading",
        "Green.\nCitation(s):\nblock: B3",
        "Green.",
        [{"block": "B3"}],
        False,
        "citation(s)",
    ),
    (
        "citations-heading",
        "Green.\nCitations:\nsource: docs/guide/setup.md",
        "Green.",
        [{"source": "docs/guide/setup.md"}],
        False,
        "citations",
    ),
    (
        "markdown-bold-heading-dash-bullets",
        "Blueberries are now green.\n\n**Source:**\n- date: 2021-01-01\n- url: https://web.site/123",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "source",
    ),
    (
        "bold-outside-colon-star-bullets-bold-keys",
        "**Answer:** Blueberries are now green.\n\n**Sources**:\n* **date:** 2021-01-01\n* **url**: https://web.site/123",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "sources",
    ),
    (
        "markdown-heading-without-colon",
        "Green.\n\n### References\n- source: news/berries.txt\n- page: 3",
        "Green.",
        [{"source": "news/berries.txt", "page": "3"}],
        False,
        "references",
    ),
    (
        "numbered-groups-with-continuation-lines",
        "Green.\nSources:\n1. date: 2021-01-01\n   url: https://web.site/123\n2. source: papers/botany.pdf\n   page: 3",
        "Green.",
        [CARD_GROUP, {"source": "papers/botany.pdf", "page": "3"}],
        False,
        "sources",
    ),
    (
        "numbered-one-line-groups",
        "Green.\nSources:\n1. block: B1, source: news/berries.txt\n2. block: B2, source: papers/botany.pdf",
        "Green.",
        [{"block": "B1", "source": "news/berries.txt"}, {"block": "B2", "source": "papers/botany.pdf"}],
        False,
        "sources",
    ),
    (
        "repeated-key-starts-new-group",
        "Green.\nSource:\nblock: B1\nblock: B2",
        "Green.",
        [{"block": "B1"}, {"block": "B2"}],
        False,
        "source",
    ),
    (
        "repeated-key-pairs-without-blank-lines",
        "Green.\nSource:\nblock: B1\nsource: news/berries.txt\nblock: B3\nsource: docs/guide/setup.md",
        "Green.",
        [{"block": "B1", "source": "news/berries.txt"}, {"block": "B3", "source": "docs/guide/setup.md"}],
        False,
        "source",
    ),
    (
        "numbered-reference-headings",
        "Green.\nReference 1:\nblock: B1\nReference 2:\nblock: B2",
        "Green.",
        [{"block": "B1"}, {"block": "B2"}],
        False,
        "reference",
    ),
    (
        "inline-parenthesised-pairs",
        "Anthocyanin makes blueberries blue (source: papers/botany.pdf, page: 3).",
        "Anthocyanin makes blueberries blue.",
        [{"source": "papers/botany.pdf", "page": "3"}],
        False,
        "inline",
    ),
    (
        "inline-bracketed-source",
        "Blueberries are now green [source: news/berries.txt] and keep their name.",
        "Blueberries are now green and keep their name.",
        [{"source": "news/berries.txt"}],
        False,
        "inline",
    ),
    (
        "inline-block-refs",
        "Blueberries are green [B1]. Install with pip (B3, B1).",
        "Blueberries are green. Install with pip.",
        [{"block": "B1"}, {"block": "B3"}],
        False,
        "inline",
    ),
    (
        "bare-source-value",
        "Green.\nSource: docs/a.md",
        "Green.",
        [{"source": "docs/a.md"}],
        False,
        "source",
    ),
    (
        "bare-url-value",
        "Green.\nSource: https://web.site/123",
        "Green.",
        [{"source": "https://web.site/123"}],
        False,
        "source",
    ),
    (
        "bare-block-ref",
        "Green.\nSource: Block B2",
        "Green.",
        [{"block": "B2"}],
        False,
        "source",
    ),
    (
        "bare-values-as-bullets",
        "Green.\nSources:\n- news/berries.txt\n- https://web.site/123",
        "Green.",
        [{"source": "news/berries.txt"}, {"source": "https://web.site/123"}],
        False,
        "sources",
    ),
    (
        "mid-line-heading-after-sentence",
        "Blueberries are now green. Source: news/berries.txt",
        "Blueberries are now green.",
        [{"source": "news/berries.txt"}],
        False,
        "source",
    ),
    (
        "no-source-information-available",
        "Blueberries are now green.\nSource: No source information is available.",
        "Blueberries are now green.",
        [],
        True,
        "source",
    ),
    (
        "no-source-standalone-line",
        "Blueberries are now green.\n\nNo source information is available.",
        "Blueberries are now green.",
        [],
        True,
        None,
    ),
    (
        "no-source-under-heading-line",
        "Blueberries are now green.\nReference(s):\nThere is no source information available for this text.",
        "Blueberries are now green.",
        [],
        True,
        "reference(s)",
    ),
    (
        "source-none",
        "Green.\nSource: N/A",
        "Green.",
        [],
        True,
        "source",
    ),
    (
        "truncated-heading-only",
        "Blueberries are now green.\nSource:",
        "Blueberries are now green.",
        [],
        False,
        "source",
    ),
    (
        "truncated-half-line",
        "Blueberries are now green.\nSource:\ndate: 2021-01-01\nur",
        "Blueberries are now green.",
        [{"date": "2021-01-01"}],
        False,
        "source",
    ),
    (
        "truncated-inside-value",
        "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.si",
        "Blueberries are now green.",
        [{"date": "2021-01-01", "url": "https://web.si"}],
        False,
        "source",
    ),
    (
        "prose-after-sources",
        "Blueberries are now green.\nSource:\nblock: B1\n\nLet me know if you have other questions.",
        "Blueberries are now green.\n\nLet me know if you have other questions.",
        [{"block": "B1"}],
        False,
        "source",
    ),
    (
        "no-sources-at-all",
        "Blueberries are now green, but will keep their name.",
        "Blueberries are now green, but will keep their name.",
        [],
        False,
        None,
    ),
    (
        "prose-starting-with-heading-word",
        "Sources say that blueberries are now green.",
        "Sources say that blueberries are now green.",
        [],
        False,
        None,
    ),
    (
        "values-with-colons-split-on-first",
        "Green.\nSource:\ntitle: Plants: A Study\nurl: http://x.org:8080/a?b=c:d",
        "Green.",
        [{"title": "Plants: A Study", "url": "http://x.org:8080/a?b=c:d"}],
        False,
        "source",
    ),
    (
        "trailing-eos-junk",
        "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123</s>",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "source",
    ),
    (
        "trailing-chatml-and-echoed-marker",
        "Blueberries are now green.\nSource:\nblock: B1<|im_end|>\nENDINSTRUCTION\n<|im_end|>",
        "Blueberries are now green.",
        [{"block": "B1"}],
        False,
        "source",
    ),
    (
        "runaway-next-turn-is-cut",
        "Blueberries are now green.\nSource: block: B1\nUSER: thanks!\nASSISTANT: You're welcome.",
        "Blueberries are now green.",
        [{"block": "B1"}],
        False,
        "source",
    ),
    (
        "multi-question-per-answer-sources",
        "1. Blueberries are now green.\nSource: block: B1\n\n2. Leaves are green because of chlorophyll.\n"
        "Source: block: B4",
        "1. Blueberries are now green.\n\n2. Leaves are green because of chlorophyll.",
        [{"block": "B1"}, {"block": "B4"}],
        False,
        "source",
    ),
    (
        "metadata-without-heading",
        "Blueberries are now green.\ndate: 2021-01-01\nurl: https://web.site/123",
        "Blueberries are now green.",
        [CARD_GROUP],
        False,
        "bare",
    ),
    (
        "block-labels-without-heading",
        "Green.\nBlock B1:\nsource: news/berries.txt\nBlock B3:\nsource: docs/guide/setup.md",
        "Green.",
        [{"block": "B1", "source": "news/berries.txt"}, {"block": "B3", "source": "docs/guide/setup.md"}],
        False,
        "bare",
    ),
    (
        "capitalised-keys-and-separators",
        "Green.\nSources: Block: B1; Source: news/berries.txt | Page: 3",
        "Green.",
        [{"block": "B1", "source": "news/berries.txt", "page": "3"}],
        False,
        "sources",
    ),
    (
        "crlf-newlines-and-identical-groups-deduped",
        "Green [source: news/berries.txt].\r\nSource:\r\nsource: news/berries.txt\r\n",
        "Green.",
        [{"source": "news/berries.txt"}],
        False,
        "source",
    ),
    (
        "hallucinated-source-is-still-parsed",
        "Blueberries are purple.\nSource:\ntitle: The Purple Berry Journal\nurl: https://fake.example/999",
        "Blueberries are purple.",
        [{"title": "The Purple Berry Journal", "url": "https://fake.example/999"}],
        False,
        "source",
    ),
    (
        "source-then-page-on-next-line",
        "Green.\nSource: papers/botany.pdf\npage: 7",
        "Green.",
        [{"source": "papers/botany.pdf", "page": "7"}],
        False,
        "source",
    ),
]


@pytest.mark.parametrize(
    ("text", "answer", "groups", "no_source", "style"),
    [case[1:] for case in PARSE_CASES],
    ids=[case[0] for case in PARSE_CASES],
)
def test_parse_table(text: str, answer: str, groups: list[dict[str, str]], no_source: bool, style: str | None) -> None:
    parsed = parse(text)
    assert parsed.answer == answer
    assert parsed.groups == groups
    assert parsed.no_source is no_source
    assert parsed.style == style


def test_parse_table_is_big_enough() -> None:
    assert len(PARSE_CASES) >= 30
    assert len({case[0] for case in PARSE_CASES}) == len(PARSE_CASES)


def test_parse_keeps_key_order_of_each_group() -> None:
    parsed = parse("x\nSource:\nurl: u\ndate: d\ntitle: t")
    assert list(parsed.groups[0]) == ["url", "date", "title"]


# ---------------------------------------------------------------------------------------------------------------
# Blocks the prompt offered (built with the real builder, so contexts are what the model saw)
# ---------------------------------------------------------------------------------------------------------------

BERRIES = "In a shocking turn of events, blueberries are now green, but will be sticking with the same name."
BOTANY = "Anthocyanin pigments give blueberries their blue colour. The pigment changes with soil acidity."
SETUP = "Install the package with pip and run the setup command to create the database."
LEAVES = "Chlorophyll makes leaves green during the growing season."


def hit(chunk_id: int, document_id: int, ordinal: int, text: str, start: int, **kw: Any) -> Hit:
    return Hit(
        chunk_id=chunk_id,
        score=0.5,
        document_id=document_id,
        collection="default",
        ordinal=ordinal,
        text=text,
        char_start=start,
        char_end=start + len(text),
        **kw,
    )


BOTANY_META: dict[str, Any] = dict(source="papers/botany.pdf", title="Plant Pigments", metadata={"author": "Ann Smith"})


@pytest.fixture
def blocks() -> list[Block]:
    hits = [
        hit(1, 1, 0, BERRIES, 0, source="news/berries.txt", date="2021-01-01", url="https://web.site/123"),
        hit(21, 2, 2, BOTANY[:56], 100, page_start=3, page_end=3, **BOTANY_META),
        hit(22, 2, 3, BOTANY[40:], 140, page_start=3, page_end=4, **BOTANY_META),
        hit(3, 3, 0, SETUP, 0, source="docs/guide/setup.md", title="Setup Guide", date="2022-02-02"),
        hit(4, 2, 9, LEAVES, 900, page_start=7, page_end=7, **BOTANY_META),
    ]
    built = build_blocks(hits, 100_000, lambda s: len(str(s).split())).blocks
    assert [b.ref for b in built] == ["B1", "B2", "B3", "B4"]
    assert [b.chunk_ids for b in built] == [[1], [21, 22], [3], [4]]
    assert built[1].text == BOTANY
    return built


def test_fixture_contexts(blocks: list[Block]) -> None:
    assert blocks[0].context == {
        "block": "B1",
        "source": "news/berries.txt",
        "date": "2021-01-01",
        "url": "https://web.site/123",
    }
    assert blocks[1].context == {
        "block": "B2",
        "source": "papers/botany.pdf",
        "title": "Plant Pigments",
        "page": "3-4",
        "author": "Ann Smith",
    }
    assert blocks[3].context["page"] == "7"


# (id, model output, expected [(status, block_ref, match)])
RESOLVE_CASES: list[tuple[str, str, list[tuple[str, str | None, str | None]]]] = [
    (
        "card-exact",
        "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123",
        [("verified", "B1", "exact")],
    ),
    ("block-ref", "Blueberries are blue.\nSource: block: B2", [("verified", "B2", "ref")]),
    ("block-ref-lowercase-in-brackets", "Green [b3].\nSource:\nblock: [b3]", [("verified", "B3", "ref")]),
    ("two-refs-in-one-value", "Both.\nSource: block: B1, B3", [("verified", "B1", "ref"), ("verified", "B3", "ref")]),
    ("ref-wins-over-other-keys", "x\nSource:\nblock: B3\nsource: news/berries.txt", [("verified", "B3", "ref")]),
    ("exact-source", "Green.\nSource:\nsource: news/berries.txt", [("verified", "B1", "exact")]),
    (
        "page-picks-block-of-same-document",
        "Leaves.\nSource:\nsource: papers/botany.pdf\npage: 7",
        [("verified", "B4", "exact")],
    ),
    ("tolerant-source-suffix", "Green.\nSource: berries.txt", [("verified", "B1", "tolerant")]),
    ("tolerant-absolute-path", "Green.\nSource: /srv/data/news/berries.txt", [("verified", "B1", "tolerant")]),
    ("tolerant-url-scheme-and-slash", "Green.\nSource:\nurl: http://WEB.site/123/", [("verified", "B1", "tolerant")]),
    (
        "tolerant-key-order-and-case",
        "Green.\nSource:\nURL: https://WEB.SITE/123\nDate:  2021-01-01 ",
        [("verified", "B1", "tolerant")],
    ),
    (
        "tolerant-page-inside-range",
        "Blue.\nSource:\nsource: papers/botany.pdf\npage: p. 4",
        [("verified", "B2", "tolerant")],
    ),
    ("tolerant-source-given-as-title", "Pip.\nSource: setup guide", [("verified", "B3", "tolerant")]),
    (
        "tolerant-alias-keys",
        "Pip.\nSource:\nfile: setup.md\nlink: docs/guide/setup.md",
        [("verified", "B3", "tolerant")],
    ),
    (
        "partial-unknown-extra-key",
        "Pip.\nSource:\nsource: docs/guide/setup.md\njournal: Nature",
        [("verified", "B3", "partial")],
    ),
    (
        "partial-nonexistent-ref-but-right-source",
        "Pip.\nSource:\nblock: B9\nsource: docs/guide/setup.md",
        [("verified", "B3", "partial")],
    ),
    (
        "partial-truncated-url",
        "Green.\nSource:\ndate: 2021-01-01\nurl: https://web.si",
        [("verified", "B1", "partial")],
    ),
    (
        "same-document-tie-broken-by-support",
        "Anthocyanin pigments make blueberries blue.\nSource: papers/botany.pdf",
        [("verified", "B2", "exact")],
    ),
    (
        "same-document-tie-other-way",
        "Chlorophyll makes leaves green.\nSource:\nauthor: Ann Smith",
        [("verified", "B4", "exact")],
    ),
    ("hallucinated-url", "Green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/999", [("unverified", None, None)]),
    (
        "hallucinated-document",
        "Purple.\nSource:\ntitle: The Purple Berry Journal\nurl: https://fake.example/9",
        [("unverified", None, None)],
    ),
    ("hallucinated-source-with-right-page", "x\nSource:\nsource: made-up.pdf\npage: 3", [("unverified", None, None)]),
    ("nonexistent-block-ref", "x\nSource: block: B9", [("unverified", None, None)]),
    ("page-not-in-prompt", "x\nSource:\nsource: papers/botany.pdf\npage: 12", [("unverified", None, None)]),
    ("only-unknown-keys", "x\nSource:\njournal: Nature", [("unverified", None, None)]),
    (
        "mixed-good-and-bad-groups",
        "x\nSources:\nblock: B1\n\nsource: nowhere.txt\n\nurl: docs/guide/setup.md",
        [("verified", "B1", "ref"), ("unverified", None, None), ("verified", "B3", "tolerant")],
    ),
    ("inline-refs", "Green [B1]. Pip (B3).", [("verified", "B1", "ref"), ("verified", "B3", "ref")]),
    (
        "numbered-single-pairs-merge-into-one-citation",
        "Green.\nSources:\n1. date: 2021-01-01\n2. url: https://web.site/123",
        [("verified", "B1", "exact")],
    ),
    ("no-source", "Green.\nSource: No source information is available.", []),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in RESOLVE_CASES], ids=[c[0] for c in RESOLVE_CASES])
def test_resolve_table(blocks: list[Block], text: str, expected: list[tuple[str, str | None, str | None]]) -> None:
    parsed = parse(text)
    citations = resolve(parsed, blocks)
    assert [(c.status, c.block_ref, c.match) for c in citations] == expected
    # Invariant: every citation points at a block of the prompt, or is flagged unverified.
    refs = {b.ref for b in blocks}
    for c in citations:
        assert (c.status == "verified" and c.block_ref in refs) or (c.status == "unverified" and c.block_ref is None)


def test_resolved_citation_fields(blocks: list[Block]) -> None:
    [cit] = resolve(parse("Blue.\nSource:\nsource: papers/botany.pdf\npage: 4"), blocks)
    assert cit.chunk_ids == [21, 22]
    assert cit.document_id == 2
    assert cit.source == "papers/botany.pdf" and cit.title == "Plant Pigments"
    assert cit.pages == [4]  # the cited page, inside the block's pages 3-4
    assert (cit.char_start, cit.char_end) == (100, 140 + len(BOTANY[40:]))
    assert cit.raw == {"source": "papers/botany.pdf", "page": "4"}
    [whole] = resolve(parse("Blue.\nSource: block: B2"), blocks)
    assert whole.pages == [3, 4]  # no page cited: the block's pages


def test_partly_hallucinated_refs_are_flagged_not_dropped(blocks: list[Block]) -> None:
    cits = resolve(parse("x\nSource: block: B1, B9"), blocks)
    assert [(c.status, c.block_ref, c.raw) for c in cits] == [
        ("verified", "B1", {"block": "B1, B9"}),
        ("unverified", None, {"block": "B9"}),
    ]


def test_unverified_keeps_raw_group(blocks: list[Block]) -> None:
    [cit] = resolve(parse("x\nSource:\ntitle: Nope\nurl: https://nope.example"), blocks)
    assert cit.status == "unverified"
    assert cit.raw == {"title": "Nope", "url": "https://nope.example"}
    assert cit.chunk_ids == [] and cit.document_id is None


def test_merged_citation_unions_raw(blocks: list[Block]) -> None:
    [cit] = resolve(parse("Green.\nSources:\n1. date: 2021-01-01\n2. url: https://web.site/123"), blocks)
    assert cit.raw == CARD_GROUP


def test_ambiguous_across_documents_is_unverified() -> None:
    hits = [
        hit(1, 1, 0, "Red apples are sweet.", 0, source="a.md", date="2020-01-01"),
        hit(2, 2, 0, "Red cherries are sour.", 0, source="b.md", date="2020-01-01"),
    ]
    built = build_blocks(hits, 1000, lambda s: len(str(s).split())).blocks
    [cit] = resolve(parse("They are red.\nSource:\ndate: 2020-01-01"), built)
    assert cit.status == "unverified" and cit.match == "ambiguous"
    # ... unless the answer's wording singles one out.
    [cit2] = resolve(parse("Cherries are sour.\nSource:\ndate: 2020-01-01"), built)
    assert cit2.status == "verified" and cit2.block_ref == "B2"


def test_resolve_with_no_blocks_flags_everything() -> None:
    cits = resolve(Parsed(answer="x", groups=[{"block": "B1"}, {"source": "a.md"}]), [])
    assert [c.status for c in cits] == ["unverified", "unverified"]


def test_resolve_dedupes_identical_groups(blocks: list[Block]) -> None:
    parsed = Parsed(answer="x", groups=[{"url": "nope"}, {"url": "nope"}, {"block": "B1"}, {"block": "B1"}])
    assert [(c.status, c.block_ref) for c in resolve(parsed, blocks)] == [("unverified", None), ("verified", "B1")]


# ---------------------------------------------------------------------------------------------------------------
# Support and verification
# ---------------------------------------------------------------------------------------------------------------


def test_verify_scores_support(blocks: list[Block]) -> None:
    answer = "Blueberries are now green."
    cits = resolve(parse(answer + "\nSources:\nblock: B1\n\nblock: B3\n\nurl: https://nope.example"), blocks)
    verified = verify(answer, cits, blocks)
    assert [c.support for c in verified] == [1.0, 0.0, 0.0]
    assert [c.status for c in verified] == ["verified", "verified", "unverified"]
    assert all(c.support == 0.0 for c in cits)  # inputs are not mutated


def test_support_is_best_sentence(blocks: list[Block]) -> None:
    answer = "Blueberries are now green. You install it with pip and run the setup command."
    cits = resolve(parse(answer + "\nSource: block: B1, B3"), blocks)
    b1, b3 = verify(answer, cits, blocks)
    assert b1.support == 1.0 and b3.support == 1.0


def test_partial_support(blocks: list[Block]) -> None:
    answer = "Blueberries are now purple and expensive."
    [cit] = verify(answer, resolve(parse(answer + "\nSource: block: B1"), blocks), blocks)
    assert 0.0 < cit.support < 1.0
    assert cit.support == pytest.approx(2 / 4, abs=1e-4)  # {blueberry, now} of {blueberry, now, purple, expensive}


def test_support_uses_metadata(blocks: list[Block]) -> None:
    answer = "Ann Smith wrote it."
    [cit] = verify(answer, resolve(parse(answer + "\nSource: block: B2"), blocks), blocks)
    assert cit.support == pytest.approx(2 / 3, abs=1e-4)  # ann, smith of {ann, smith, wrote}


# ---------------------------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------------------------


def test_infer_attributes_sentences(blocks: list[Block]) -> None:
    answer = "Chlorophyll makes leaves green. Blueberries are now green. Pigments shift with soil acidity."
    cits = infer(answer, blocks)
    assert [(c.status, c.block_ref) for c in cits] == [("inferred", "B1"), ("inferred", "B2"), ("inferred", "B4")]
    assert all(c.raw == {} and c.support >= 0.6 for c in cits)
    assert cits[1].chunk_ids == [21, 22] and cits[1].pages == [3, 4]


def test_infer_needs_support(blocks: list[Block]) -> None:
    assert infer("Quantum computers use qubits for factoring.", blocks) == []
    assert infer("Blueberries are now green.", blocks, min_support=1.01) == []
    assert infer("Blueberries are now green.", []) == []


def test_infer_nothing_for_unknown(blocks: list[Block]) -> None:
    assert infer("I don't know whether blueberries are now green.", blocks) == []


# ---------------------------------------------------------------------------------------------------------------
# Abstention
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "I do not know the answer to that.",
        "The answer is not provided in the input.",
        "This question cannot be answered from the given context.",
        "There is no information about the capital of Mars in the input.",
        "The provided text does not mention who founded the company.",
        "I'm sorry, but I cannot answer that based on the input. It only covers blueberries.",
        "Unfortunately, the context doesn't contain that information.",
        "The input does not specify the price.\nSource: No source information is available.",
        "Not enough information is given to answer.",
        "I am unable to determine the date from the text.",
        "That is not mentioned in the provided documents.",
        "No information about prices is given.",
        "The answer is not in the input.",
        "We cannot determine that from these passages.",
    ],
)
def test_says_unknown_positive(text: str) -> None:
    assert says_unknown(text)


@pytest.mark.parametrize(
    "text",
    [
        "Blueberries are now green.",
        "Blueberries are now green. The input does not say why.",
        "The recipe does not contain nuts.",
        "The server stores no data about users.",
        "You cannot find blueberries in winter.",
        "Blueberries are not green in the context of winter.",
        "Install the package with pip.",
        "",
    ],
)
def test_says_unknown_negative(text: str) -> None:
    assert not says_unknown(text)


def test_citation_type_is_the_domain_type(blocks: list[Block]) -> None:
    assert all(isinstance(c, Citation) for c in resolve(parse("x\nSource: block: B1"), blocks))
