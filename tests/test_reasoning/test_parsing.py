"""The steps a reasoning program reads out of a completion: lines and numbered lists."""

from src.reasoning.common import lines_of, numbered_items


def test_lines_are_the_non_empty_stripped_lines():
    assert lines_of("  first \n\n second\n \n") == ["first", "second"]
    assert lines_of("\n \n") == []


def test_numbered_items_drop_their_numbers_and_join_continuations():
    lines = ["1. Find the ship.", "2) Ask the captain", "when it sails.", "Step 3: Board it.", "4:"]
    assert numbered_items(lines) == ["Find the ship.", "Ask the captain when it sails.", "Board it."]


def test_lines_without_numbers_are_items_of_their_own_until_a_number_comes():
    assert numbered_items(["Find the ship", "then board it"]) == ["Find the ship then board it"]
    assert numbered_items(["Look around.", "1. Find the ship."]) == ["Look around.", "Find the ship."]
