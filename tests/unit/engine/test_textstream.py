"""Incremental detokenization and stop strings."""

from espalier.service.engine.textstream import TextStream


def test_multibyte_character_split_across_pieces_is_held_until_whole():
    ts = TextStream()
    euro = "€".encode()
    assert ts.push(b"a" + euro[:1]) == "a"
    assert ts.push(euro[1:2]) == ""
    assert ts.push(euro[2:] + b"b") == "€b"
    assert ts.flush() == ""


def test_stop_string_across_pieces_releases_text_before_it():
    ts = TextStream(stop=("\n\n",))
    assert ts.push(b"hello\n") == "hello"  # "\n" may start the stop string: held back
    assert ts.push(b"\nworld") == ""
    assert ts.stopped


def test_held_text_released_when_no_stop_follows():
    ts = TextStream(stop=("END",))
    assert ts.push(b"the E") == "the "
    assert ts.push(b"nd") == "End"
    assert ts.push(b" EN") == " "
    assert ts.flush() == "EN"


def test_earliest_of_several_stops_wins():
    ts = TextStream(stop=("zz", "b"))
    assert ts.push(b"aabzz") == "aa"


def test_a_whitespace_stop_does_not_end_a_reply_that_has_not_begun():
    ts = TextStream(stop=("\n",))
    assert ts.push(b"\n") == "\n"  # a leading line break: the one line starts below it
    assert ts.push(b" Heat rises.") == " Heat rises."
    assert not ts.stopped
    assert ts.push(b"\n2. Next") == "" and ts.stopped
    blank = TextStream(stop=("\n\n",))
    assert blank.push(b"\n") == "" and blank.push(b"\nText") == "\n\nText" and not blank.stopped
    assert blank.push(b"\n\nmore") == "" and blank.stopped


def test_other_stops_match_from_the_first_character():
    ts = TextStream(stop=("END", "\n"))
    assert ts.push(b"END") == "" and ts.stopped
