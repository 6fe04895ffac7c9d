"""Declared CONFIG keys: what they accept, how they are described, how they are checked."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from channels_engines import InvalidConfigError, Option
from channels_engines.layer_options import check_capacity_patterns
from channels_engines.options import closest, validate_options


@pytest.mark.parametrize(
    ("option", "text"),
    [
        (Option((int,), 1, ""), "an integer"),
        (Option((int,), 1, "", minimum=1), "an integer >= 1"),
        (Option((float,), 1, "", minimum=0.5), "a finite number >= 0.5"),
        (Option((float,), 1, "", minimum=0, nullable=True), "a finite number >= 0 or None"),
        (Option((float,), 1, "", above=0, maximum=86400), "a number > 0 and <= 86400"),
        (Option((float,), 1, "", maximum=2.5), "a number <= 2.5"),
        (Option((int,), 1, "", minimum=1, maximum=2**31 - 1), "an integer >= 1 and <= 2147483647"),
        (Option((float,), 1, ""), "a finite number"),
        (Option((str, int), "", ""), "a string or an integer"),
        (Option((bool,), False, ""), "True or False"),
        (Option((str,), "a", "", choices=("a", "b")), "one of 'a', 'b'"),
        (Option((float,), 1, "", describe_as="a share from 0 to 1"), "a share from 0 to 1"),
    ],
)
def test_describe_says_what_is_allowed_in_words(option: Option, text: str) -> None:
    assert option.describe() == text


def test_bool_is_not_an_integer_here() -> None:
    option = Option((int,), 1, "")
    assert option.problem(True) == "an integer"
    assert option.problem(1) is None
    assert Option((bool,), False, "").problem(True) is None


def test_integers_are_accepted_where_numbers_are_asked_for() -> None:
    option = Option((float,), 1.0, "", minimum=0)
    assert option.problem(3) is None
    assert option.problem(0.0) is None
    assert option.problem(-1) == "a finite number >= 0"
    assert option.problem(False) == "a finite number >= 0"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_never_numbers_here(value: float) -> None:
    assert Option((float,), 1.0, "").problem(value) == "a finite number"
    assert Option((float,), 1.0, "", minimum=0).problem(value) == "a finite number >= 0"
    assert Option((float,), 1.0, "", above=0, maximum=10).problem(value) == (
        "a number > 0 and <= 10"
    )


def test_bounds_are_inclusive_except_above() -> None:
    option = Option((float,), 1.0, "", above=0, maximum=10)
    assert [option.problem(value) for value in (0, 0.0, 1e-9, 10, 10.000001, 2**70)] == [
        "a number > 0 and <= 10",
        "a number > 0 and <= 10",
        None,
        None,
        "a number > 0 and <= 10",
        "a number > 0 and <= 10",
    ]
    sized = Option((int,), 5, "", minimum=1, maximum=100)
    assert [sized.problem(value) for value in (0, 1, 100, 101)] == [
        "an integer >= 1 and <= 100",
        None,
        None,
        "an integer >= 1 and <= 100",
    ]


def test_none_only_when_nullable() -> None:
    assert Option((int,), 1, "").problem(None) == "an integer"
    assert Option((int,), 1, "", nullable=True).problem(None) is None


def test_check_hook_runs_after_the_type_check() -> None:
    calls: list[Any] = []

    def even(value: Any) -> str | None:
        calls.append(value)
        return None if value % 2 == 0 else "an even integer"

    option = Option((int,), 2, "", check=even)
    assert option.problem("x") == "an integer"
    assert calls == []
    assert option.problem(3) == "an even integer"
    assert option.problem(4) is None


def test_validate_options_fills_in_defaults() -> None:
    declared = {"a": Option((int,), 1, ""), "b": Option((str,), "x", "")}
    assert validate_options({"a": 5}, declared, where="W", owner="O") == {"a": 5, "b": "x"}


def test_validate_options_refuses_an_unknown_key_with_a_suggestion() -> None:
    declared = {"timeout": Option((float,), 1, ""), "retries": Option((int,), 1, "")}
    with pytest.raises(InvalidConfigError) as caught:
        validate_options({"timout": 1}, declared, where="W", owner="ENGINE 'x'")
    assert str(caught.value) == (
        "W: unknown CONFIG key 'timout' for ENGINE 'x'. Did you mean 'timeout'? Allowed keys: "
        "retries, timeout."
    )


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        validate_options({"a": "x" * 200}, {"a": Option((int,), 1, "")}, where="W", owner="O")
    assert str(caught.value) == f"W: CONFIG['a'] must be an integer, not '{'x' * 76}... (str)."


def test_secret_values_are_hidden_in_messages() -> None:
    declared = {"password": Option((str,), "", "", secret=True)}
    with pytest.raises(InvalidConfigError) as caught:
        validate_options({"password": b"hunter2"}, declared, where="W", owner="O")
    assert "hunter2" not in str(caught.value)
    assert str(caught.value) == "W: CONFIG['password'] must be a string, not <hidden> (bytes)."


@pytest.mark.parametrize(
    ("word", "expected"),
    [("capacty", "capacity"), ("EXPIRY", None), ("group_expire", "group_expiry"), ("x", None)],
)
def test_closest_suggests_only_likely_typos(word: str, expected: str | None) -> None:
    names = ["capacity", "channel_capacity", "expiry", "group_expiry", "max_message_size"]
    assert closest(word, names) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({}, True),
        ({"a*": 1, re.compile("b"): 5}, True),
        ({"a*": 0}, False),
        ({"a*": True}, False),
        ({"a*": 1.5}, False),
        ({1: 5}, False),
    ],
)
def test_capacity_patterns_map_globs_or_regexes_to_positive_integers(
    value: dict[Any, Any], ok: bool
) -> None:
    assert (check_capacity_patterns(value) is None) is ok
