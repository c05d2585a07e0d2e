from __future__ import annotations

from ctxqa.rag.verify.score import MISSING_NUMBER_CAP, is_quote, names, numbers, support

EVIDENCE = "Daily snapshots are kept for 35 days. The blue widget costs 1,000 euros and ships from Lyon."


def test_numbers_are_canonical() -> None:
    assert numbers("1,000 euros, 35% off, 1.50 GB in 2023, twelve days") == {"1000", "35", "1.5", "2023", "12"}
    assert numbers("version 10-Q") >= {"10"}
    assert numbers("no digits here") == frozenset()


def test_names_skip_sentence_starts_and_stopwords() -> None:
    assert names("The widget ships from Lyon. Porto makes it for NVIDIA.") == {"lyon", "nvidia"}


def test_a_number_no_passage_holds_makes_the_claim_unsupported() -> None:
    s = support("The maximum amount of data that can be backed up is 1 GB.", EVIDENCE, 0.7)
    assert s.missing_numbers == ("1",) and s.score <= MISSING_NUMBER_CAP
    # Every word but the number overlaps: still capped.
    s = support("Daily snapshots are kept for 36 days.", EVIDENCE, 0.95)
    assert s.missing_numbers == ("36",) and s.score <= MISSING_NUMBER_CAP and not s.quote
    assert support("Daily snapshots are kept for thirty-five days.", "kept for 35 days").missing_numbers == ()


def test_quotes_and_near_quotes() -> None:
    assert support("Daily snapshots are kept for 35 days.", EVIDENCE).quote
    assert is_quote("the blue widget costs 1,000 euros and ships from lyon", EVIDENCE)
    assert not is_quote("The red widget is made in Porto and costs little.", EVIDENCE)
    assert not is_quote("kept for", EVIDENCE)  # too short to call a quote


def test_a_missing_name_costs_support() -> None:
    right = support("The blue widget ships from Lyon.", EVIDENCE)
    wrong = support("The blue widget ships from Porto.", EVIDENCE)
    assert wrong.missing_names == ("porto",) and wrong.score < right.score


def test_paraphrase_similarity_lifts_a_reworded_claim() -> None:
    claim = "Snapshots taken every day are retained for 35 days."
    assert support(claim, EVIDENCE, 0.85).score > support(claim, EVIDENCE, 0.15).score
    assert support(claim, EVIDENCE, None).paraphrase == 0.0
