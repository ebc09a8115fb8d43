"""Lines that could repeat per frame are written once per interval per kind, with a count of those held."""

from webapp.logs import Throttle, held_note


def test_one_line_per_interval_per_kind_and_the_count_of_those_held_back():
    now = [0.0]
    said = Throttle(10.0, clock=lambda: now[0])
    assert said.allow("oversize") == 0
    assert [said.allow("oversize") for _ in range(5)] == [None] * 5
    assert said.allow("queue") == 0  # another kind has its own interval
    now[0] = 10.0
    assert said.allow("oversize") == 5
    assert said.allow("oversize") is None


def test_the_note_names_what_was_held_back_only_when_something_was():
    assert held_note(0) == ""
    assert held_note(3) == " (3 more like it since the last line)"
