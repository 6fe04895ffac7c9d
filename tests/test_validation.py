"""Channel names, group names and message values, as the layer checks them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels_engines.validation import (
    MAX_NAME_LENGTH,
    non_local_name,
    require_channel_name,
    require_group_name,
    require_valid_message,
)

#: The specification's names, matched in full and in ASCII only.
NORMAL = re.compile(r"\A[a-zA-Z0-9._-]{1,100}\Z")
SPECIFIC = re.compile(r"\A[a-zA-Z0-9._-]+![a-zA-Z0-9._-]*\Z")
GROUP = NORMAL

ALLOWED = "dict (with str keys), list, tuple, str, bytes, int (signed 64-bit), float, bool and None"
CHARACTERS = "ASCII letters, digits, hyphens, underscores and periods"

#: Text likely to sit near the boundary: valid characters, '!', and close look-alikes.
names = st.one_of(
    st.text(alphabet="aZ09._-!\n é\u0130\u212a\x00/", max_size=MAX_NAME_LENGTH + 5),
    st.text(max_size=MAX_NAME_LENGTH + 5),
    st.from_regex(NORMAL, fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9._-]{1,60}![a-zA-Z0-9._-]{0,60}", fullmatch=True),
)


def accepted(check: Any, name: Any) -> bool:
    try:
        check(name)
    except TypeError:
        return False
    return True


@settings(max_examples=500, database=None, deadline=None)
@given(names)
def test_channel_name_is_accepted_exactly_when_the_specification_allows_it(name: str) -> None:
    allowed = bool(NORMAL.match(name) or (SPECIFIC.match(name) and len(name) <= 100))
    assert accepted(require_channel_name, name) is allowed


@settings(max_examples=500, database=None, deadline=None)
@given(names)
def test_group_name_is_accepted_exactly_when_the_specification_allows_it(name: str) -> None:
    assert accepted(require_group_name, name) is bool(GROUP.match(name))


@pytest.mark.parametrize(
    "name", ["grp\n", "abc!é", "café", "two!!marks", "!local", "a b", "", "\u212aelvin"]
)
def test_names_that_look_almost_right_are_refused(name: str) -> None:
    assert not accepted(require_channel_name, name)
    assert not accepted(require_group_name, name)


def test_names_of_one_hundred_characters_are_accepted_and_longer_refused() -> None:
    assert require_channel_name("a" * 100) == "a" * 100
    assert require_channel_name("a" * 50 + "!" + "b" * 49) == "a" * 50 + "!" + "b" * 49
    assert require_group_name("g" * 100) == "g" * 100
    for check in (require_channel_name, require_group_name):
        assert not accepted(check, "a" * 101)
    assert not accepted(require_channel_name, "a" * 50 + "!" + "b" * 50)


def test_process_specific_names_may_have_an_empty_local_part() -> None:
    assert require_channel_name("specific.abc!") == "specific.abc!"
    assert not accepted(require_group_name, "specific.abc!")


def test_invalid_channel_name_message() -> None:
    with pytest.raises(TypeError) as caught:
        require_channel_name("grp\n")
    assert str(caught.value) == (
        f"channel 'grp\\n' is not a valid channel name: use only {CHARACTERS}, plus at most "
        "one '!' separating a process-specific local part."
    )


def test_invalid_group_name_message_names_the_argument() -> None:
    with pytest.raises(TypeError) as caught:
        require_group_name("a!b", "prefix")
    assert str(caught.value) == (f"prefix 'a!b' is not a valid group name: use only {CHARACTERS}.")


def test_too_long_name_message_is_shortened_and_gives_the_length() -> None:
    with pytest.raises(TypeError) as caught:
        require_channel_name("a" * 101)
    assert str(caught.value) == (
        f"channel '{'a' * 55}...' is not a valid channel name: it has 101 characters; names "
        "have 1 to 100."
    )


def test_name_that_is_not_a_string_message() -> None:
    with pytest.raises(TypeError) as caught:
        require_channel_name(b"bytes")
    assert str(caught.value) == "channel must be a str channel name, not bytes."


@pytest.mark.parametrize(
    ("channel", "expected"),
    [("plain.name", "plain.name"), ("specific.abc!x1", "specific.abc!"), ("s.a!", "s.a!")],
)
def test_non_local_name_is_the_part_up_to_the_mark(channel: str, expected: str) -> None:
    assert non_local_name(channel) == expected


# Messages ----------------------------------------------------------------------------


def test_message_of_every_allowed_type_is_accepted() -> None:
    require_valid_message(
        {
            "type": "x",
            "values": [None, True, 1.5, -(2**63), 2**63 - 1, b"raw", "text", (1, [2, {"a": 3}])],
            "empty": {},
        }
    )


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        ({"a": [1, 2, {3}]}, TypeError, f"message['a'][2] is a set; messages may hold {ALLOWED}."),
        (
            {"a": {"b": [object()]}},
            TypeError,
            f"message['a']['b'][0] is a object; messages may hold {ALLOWED}.",
        ),
        (
            {"bytes": bytearray(b"x")},
            TypeError,
            f"message['bytes'] is a bytearray; messages may hold {ALLOWED}.",
        ),
        (
            {"type": "x", 1: "one"},
            TypeError,
            "message has the key 1 (int); dict keys in messages must be str.",
        ),
        (
            {"n": [{"deep": {b"k": 1}}]},
            TypeError,
            "message['n'][0]['deep'] has the key b'k' (bytes); dict keys in messages must be str.",
        ),
        (
            {"n": 2**63},
            ValueError,
            "message['n'] is 9223372036854775808, outside the signed 64-bit range messages allow.",
        ),
        (
            {"n": (-(2**63) - 1,)},
            ValueError,
            "message['n'][0] is -9223372036854775809, outside the signed 64-bit range messages "
            "allow.",
        ),
        (
            ["type", "x"],
            TypeError,
            f"message must be a dict, not list; messages may hold {ALLOWED}.",
        ),
    ],
)
def test_invalid_message_error_gives_the_path_to_the_value(
    message: Any, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        require_valid_message(message)
    assert str(caught.value) == text


def test_deeply_nested_message_is_walked_without_recursion() -> None:
    message: dict[str, Any] = {"type": "deep"}
    inner: list[Any] = []
    message["list"] = inner
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    inner.append({1, 2})
    with pytest.raises(TypeError, match=r"is a set"):
        require_valid_message(message)
