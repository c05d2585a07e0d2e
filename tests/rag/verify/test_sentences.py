from __future__ import annotations

from ctxqa.rag.verify.sentences import sentence_spans, sentences


def test_spans_slice_back_to_the_sentences() -> None:
    text = "  Daily snapshots are kept for 35 days.  Weekly ones for 1.5 years!\nWhy? Because."
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ["Daily snapshots are kept for 35 days.", "Weekly ones for 1.5 years!",
                                             "Why?", "Because."]


def test_abbreviations_initials_and_numbers_do_not_split() -> None:
    assert sentences("See e.g. Dr. Smith at 3.30 p.m. today. J. R. R. Tolkien wrote it.") == [
        "See e.g. Dr. Smith at 3.30 p.m. today.", "J. R. R. Tolkien wrote it."]
    assert sentences("Version 3.2.1 ships. Then 4.0 follows.") == ["Version 3.2.1 ships.", "Then 4.0 follows."]


def test_lists_headings_and_wrapped_lines() -> None:
    text = "Intro:\n- first item\n- second item. More\n## Heading\ntext that wraps\nover two lines.\n\nLast"
    assert sentences(text) == ["Intro:", "first item", "second item.", "More", "Heading",
                               "text that wraps\nover two lines.", "Last"]


def test_space_before_punctuation_as_in_wikipedia_dumps() -> None:
    assert sentences("It is seasonal . Any change recurs . It is common") == [
        "It is seasonal .", "Any change recurs .", "It is common"]


def test_lower_case_after_a_period_is_not_a_new_sentence() -> None:
    assert sentences("Call the api. then wait.") == ["Call the api. then wait."]
    assert sentences("") == [] and sentences("   \n\n ") == []
