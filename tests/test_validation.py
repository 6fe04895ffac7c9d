"""Channel names, group names and message values, as the layer checks them."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest
from channels.exceptions import MessageTooLarge
from hypothesis import given, settings
from hypothesis import strategies as st

from channels_engines.testing import bounded_work, pathological_messages
from channels_engines.validation import (
    MAX_NAME_LENGTH,
    MAX_NESTING,
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


def test_deeply_nested_message_is_refused_at_the_nesting_limit_without_recursion() -> None:
    message: dict[str, Any] = {"type": "deep"}
    inner: list[Any] = []
    message["list"] = inner
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    inner.append({1, 2})
    with (
        pytest.raises(ValueError, match="nested too deeply") as caught,
        bounded_work(lines=5_000, memory=256 * 1024),
    ):
        require_valid_message(message)
    assert str(caught.value) == (
        f"message['list']{'[0]' * (MAX_NESTING - 1)} is nested too deeply: messages may nest "
        f"dicts and lists at most {MAX_NESTING} levels deep, the message itself being the first."
    )


def nested(levels: int, bottom: Any = None) -> list[Any]:
    """Lists nested ``levels`` deep, the innermost holding ``bottom``."""
    value: list[Any] = [bottom]
    for _ in range(levels - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_accepted() -> None:
    require_valid_message({"v": nested(MAX_NESTING - 1)})
    with pytest.raises(ValueError, match="nested too deeply"):
        require_valid_message({"v": nested(MAX_NESTING)})


def test_dicts_count_as_levels_of_nesting_like_lists() -> None:
    value: dict[str, Any] = {}
    for _ in range(MAX_NESTING - 1):
        value = {"d": value}
    require_valid_message(value)
    with pytest.raises(ValueError, match="nested too deeply") as caught:
        require_valid_message({"d": value})
    assert str(caught.value).startswith("message" + "['d']" * MAX_NESTING + " is nested")


@pytest.mark.parametrize(
    ("build", "text"),
    [
        (
            lambda: (lambda v: (v.append(v), {"type": "x", "v": v})[1])([]),
            "message['v'][0] is message['v'] itself: a message cannot contain itself.",
        ),
        (
            lambda: (lambda d: (d.update(d=d), {"type": "x", "v": d})[1])({}),
            "message['v']['d'] is message['v'] itself: a message cannot contain itself.",
        ),
        (
            lambda: (lambda m: (m.update(list=[1, {"back": m}]), m)[1])({"type": "x"}),
            "message['list'][1]['back'] is message itself: a message cannot contain itself.",
        ),
    ],
    ids=["list", "dict", "message"],
)
def test_message_that_contains_itself_is_refused_naming_both_places(build: Any, text: str) -> None:
    message = build()
    with (
        pytest.raises(ValueError, match="cannot contain itself") as caught,
        bounded_work(lines=1_000, memory=64 * 1024),
    ):
        require_valid_message(message)
    assert str(caught.value) == text


def test_a_value_shared_by_several_parents_is_not_a_cycle() -> None:
    shared = {"k": "v" * 100, "n": [1, 2]}
    message = {"type": "x", "a": shared, "b": [shared, shared], "c": {"d": shared}}
    require_valid_message(message, len(msgpack.packb(message)))


def test_a_shared_value_counts_once_for_each_place_it_appears() -> None:
    shared = ["x" * 100]
    message = {"type": "x", "a": [shared] * 10}
    size = len(msgpack.packb(message))
    require_valid_message(message, size)
    with pytest.raises(MessageTooLarge):
        require_valid_message(message, size - 1)


def test_a_shared_value_is_refused_where_it_nests_too_deeply() -> None:
    shared = nested(60, "x" * 100)
    message = {"first": shared, "second": nested(40, shared)}
    with pytest.raises(ValueError, match="nested too deeply") as caught:
        require_valid_message(message)
    assert str(caught.value) == (
        f"message['second']{'[0]' * 40} is nested too deeply: messages may nest dicts and "
        f"lists at most {MAX_NESTING} levels deep, the message itself being the first."
    )


def test_too_large_is_raised_as_soon_as_it_is_certain() -> None:
    with pytest.raises(MessageTooLarge) as caught:
        require_valid_message({"v": [0] * 100, "w": {1, 2}}, 50, target="channel 'x'")
    assert str(caught.value) == (
        "message for channel 'x' is at least 108 bytes encoded; the limit is 50 bytes "
        "(CONFIG 'max_message_size')."
    )


@pytest.mark.parametrize(("name", "message", "error"), list(pathological_messages()))
def test_pathological_messages_are_refused_with_little_work(
    name: str, message: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error), bounded_work(lines=20_000, memory=1024 * 1024, what=name):
        require_valid_message(message, 2 * 1024 * 1024)


def test_a_huge_dict_is_refused_before_its_keys_are_looked_at() -> None:
    message = dict.fromkeys(map(str, range(600_000)))
    with pytest.raises(MessageTooLarge), bounded_work(lines=1_000, memory=64 * 1024):
        require_valid_message(message, 1024 * 1024)


# The size bound: never more than the encoding, exact for ASCII text and small integers.

ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=40)
ascii_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(0, 127)
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(max_codepoint=127), max_size=300)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(ascii_text, children, max_size=8)
    ),
    max_leaves=20,
)
any_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=8)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=40), children, max_size=8)
    ),
    max_leaves=20,
)


@settings(max_examples=150, database=None, deadline=None)
@given(st.dictionaries(st.text(max_size=40), any_values, max_size=20))
def test_the_size_bound_never_exceeds_the_encoded_size(message: dict[str, Any]) -> None:
    require_valid_message(message, len(msgpack.packb(message, use_bin_type=True)))


@settings(max_examples=150, database=None, deadline=None)
@given(st.dictionaries(ascii_text, ascii_values, max_size=20))
def test_the_size_bound_is_exact_for_ascii_text_and_small_integers(
    message: dict[str, Any],
) -> None:
    size = len(msgpack.packb(message, use_bin_type=True))
    require_valid_message(message, size)
    with pytest.raises(MessageTooLarge):
        require_valid_message(message, size - 1)


@pytest.mark.parametrize("length", [15, 16, 31, 32, 255, 256, 65535, 65536])
def test_the_size_bound_is_exact_at_every_header_size(length: int) -> None:
    for message in (
        {"s": "a" * length},
        {"b": b"a" * length},
        {"l": [None] * length},
        {"d": dict.fromkeys(map(str, range(length)))},
        dict.fromkeys(map(str, range(length))),
    ):
        size = len(msgpack.packb(message, use_bin_type=True))
        require_valid_message(message, size)
        with pytest.raises(MessageTooLarge):
            require_valid_message(message, size - 1)
