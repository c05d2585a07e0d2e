from __future__ import annotations

from datetime import date

from ctxqa.rag.periods import (
    DocumentPeriod,
    dates_in,
    document_period,
    match,
    parse_question,
    period_ended,
    quarter_of_period,
    quarters_in,
)


def test_dates_in_their_usual_spellings() -> None:
    assert dates_in("July 30, 2023; 30 July 2023; 2023-07-30; 07/30/2023; Sept. 3, 2021") == [
        date(2023, 7, 30)] * 4 + [date(2021, 9, 3)]
    assert dates_in("February 30, 2023 is no date") == []


def test_the_period_a_report_states_and_its_calendar_quarter() -> None:
    assert period_ended("For the quarterly period ended October 29, 2023\nOR") == date(2023, 10, 29)
    assert period_ended("Form 10-Q filed on 2023-11-21 for the period ending 2023-10-29") == date(2023, 10, 29)
    # The quarter of the period's middle: fiscal calendars that end a month late, or a few days early.
    assert quarter_of_period(date(2023, 10, 29)) == (2023, 3)
    assert quarter_of_period(date(2023, 7, 30)) == (2023, 2)
    assert quarter_of_period(date(2023, 4, 1)) == (2023, 1)
    assert quarter_of_period(date(2022, 12, 31)) == (2022, 4)


def test_what_a_question_asks_about() -> None:
    assert parse_question("How did expenses compare in Q1 2023?").quarters == {(2023, 1)}
    assert parse_question("the second quarter of fiscal 2023").quarters == {(2023, 2)}
    assert parse_question("in the 2022 Q3 10-Q").quarters == {(2022, 3)}
    assert parse_question("2Q23 results and Q4'22").quarters == {(2023, 2), (2022, 4)}
    q = parse_question("for the quarter ended July 1, 2023")
    assert q.dates == {date(2023, 7, 1)} and (2023, 2) in q.quarters
    q = parse_question("revenue in 2022 versus March 2023")
    assert q.years == {2022} and q.months == {(2023, 3)}
    assert parse_question("in its most recent quarterly filing").recent
    assert parse_question("the latest 10-Q").recent and parse_question("last quarter").recent
    # Neither "current user" nor a number is a period.
    q = parse_question("How do I get the current user with 2 dependencies on port 8000?")
    assert q.empty


def test_match_and_stored_periods() -> None:
    doc = document_period("2023-07-30", "2023 Q2", "2023 Q2 NVDA.pdf", "NVIDIA CORPORATION FORM 10-Q")
    assert doc == DocumentPeriod(date(2023, 7, 30), (2023, 2), frozenset({(2023, 2)}))
    assert match(parse_question("in Q2 2023"), doc) == 1.0
    assert match(parse_question("for the quarter ended July 30, 2023"), doc) == 1.0
    assert match(parse_question("in July 2023"), doc) == 1.0
    assert match(parse_question("in 2023"), doc) == 0.5
    assert match(parse_question("in Q3 2023"), doc) == 0.5  # same year, other quarter
    assert match(parse_question("in Q3 2022"), doc) == 0.0
    assert match(parse_question("in Q3 2022"), DocumentPeriod()) == 0.0
    assert quarters_in("notes Q9 2023 and 1999 Q0") == set()
