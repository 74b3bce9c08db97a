"""The judge among answers (`core.answer_pick`): the candidates as listed, the prompt, and the reply read."""

from __future__ import annotations

from echolm_middleware.core.answer_pick import distinct_answers, parse_pick, pick_prompt


def test_different_answers_are_listed_most_given_first_and_a_tie_keeps_the_earlier() -> None:
    assert distinct_answers(["lyon", "Paris.", " paris", "rome"]) == ["Paris.", "lyon", "rome"]
    assert distinct_answers(["lyon", "paris"]) == ["lyon", "paris"]  # split: the greedy (first) leads
    assert distinct_answers(["same", "Same", "same."]) == ["same"]
    assert distinct_answers([]) == []


def test_the_prompt_keeps_the_question_and_numbers_the_candidates_on_one_line_each() -> None:
    prompt = pick_prompt("  capital of france?\n", ["lyon", "paris\nfrance"])

    assert prompt.startswith("capital of france?\n")
    assert "\n1. lyon\n2. paris france\n" in prompt  # a candidate's own line breaks would break the list
    assert prompt.endswith("Reply with its number only.")


def test_the_reply_names_a_candidate_by_number_or_word_for_word_else_nothing() -> None:
    candidates = ["card_arrival", "card_delivery_estimate", "lost_or_stolen_card"]
    assert parse_pick("2", candidates) == 1
    assert parse_pick("Answer 3.", candidates) == 2
    assert parse_pick("card_delivery_estimate", candidates) == 1  # the label itself, as instructed upstream
    assert parse_pick("Card_Arrival.", candidates) == 0
    assert parse_pick("4", candidates) is None  # no fourth candidate
    assert parse_pick("0", candidates) is None
    assert parse_pick("activate_my_card", candidates) is None
    assert parse_pick("", candidates) is None
