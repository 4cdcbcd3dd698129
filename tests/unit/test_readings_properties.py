"""Properties of decoding, checked with Hypothesis, without services: whatever a device sends,
``decode_message`` answers with readings and reasoned rejects, and sound readings come back as
they were sent."""

from __future__ import annotations

import json
import string
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.readings import (
    MAX_INVALID_ELEMENTS,
    MAX_NESTING,
    Decoded,
    Limits,
    MeterReading,
    Reading,
    VehicleReading,
    decode_message,
    parse_topic,
)

LIMITS = Limits(
    max_payload_bytes=4096, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=31)
)
# The README's defaults: room for the deep payloads, which 4 KiB would refuse for their size.
DEFAULT_LIMITS = Limits(
    max_payload_bytes=262_144, max_future_skew=timedelta(seconds=300), max_age=timedelta(days=31)
)
NOW = datetime(2026, 2, 9, 8, 46, tzinfo=UTC)
ID_CHARS = string.ascii_letters + string.digits + "._-"
FIELD_NAMES = {"kwhConsumedAc", "voltage", "timestamp", "meterId"} | {
    "soc", "kwhDeliveredDc", "batteryTemp", "vehicleId"
}  # fmt: skip
NESTING_REASON = f"nested deeper than {MAX_NESTING} levels"
# deadline=None: the machine is shared and noisy, and a slow example is not a wrong one.
FEW = settings(max_examples=150, deadline=None)
SOME = settings(max_examples=60, deadline=None)


def is_valid_topic(topic: str) -> bool:
    """The topic rule written out again, character by character, independently of the regex."""
    levels = topic.split("/")
    return (
        len(levels) == 3
        and levels[0] == "fleet"
        and levels[1] in ("meter", "vehicle")
        and 1 <= len(levels[2]) <= 64
        and all(char in ID_CHARS for char in levels[2])
    )


def check_accounted_for(decoded: Decoded, payload: bytes, limits: Limits) -> None:
    """Nothing is silently dropped, every reject says why and keeps what it refused."""
    assert decoded.readings or decoded.rejects
    for reject in decoded.rejects:
        assert reject.reason.strip()
        assert reject.payload in payload
        assert len(reject.payload) <= reject.payload_bytes <= len(payload)
        if reject.payload_bytes <= limits.max_payload_bytes:
            assert len(reject.payload) == reject.payload_bytes
        assert (reject.device_kind, reject.device_id) == (decoded.device_kind, decoded.device_id)


# 1. Arbitrary topics and bytes ----------------------------------------------------------------

device_ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=64)
valid_topics = st.builds("fleet/{}/{}".format, st.sampled_from(["meter", "vehicle"]), device_ids)
topic_levels = st.one_of(
    st.sampled_from(["fleet", "meter", "vehicle", "", "+", "#", "\x00", "\n", "M1\n", "a b"]),
    device_ids,
    st.text(max_size=10),
)
topics = st.one_of(
    st.text(),
    valid_topics,
    st.lists(topic_levels, max_size=5).map("/".join),
    st.builds(
        lambda part, times: part * times, st.text(min_size=1, max_size=5), st.integers(1, 5000)
    ),
)
bracket_soup = st.lists(
    st.sampled_from(
        [b"[", b"]", b"{", b"}", b'"', b"\\", b":", b",", b"1", b"\xff", b"\x00", b" "]
    ),
    max_size=60,
).map(b"".join)
near_the_limit = st.builds(
    lambda chunk, size: (chunk * (size // len(chunk) + 1))[:size],
    st.binary(min_size=1, max_size=16) | bracket_soup.filter(bool),
    st.integers(LIMITS.max_payload_bytes - 16, LIMITS.max_payload_bytes + 16)
    | st.integers(0, 4 * LIMITS.max_payload_bytes),
)
payloads = st.one_of(
    st.binary(max_size=200),
    bracket_soup,
    near_the_limit,
    st.text().map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@FEW
@given(topic=topics, payload=payloads)
@example(topic="fleet/meter/M1\n", payload=b"{}")
@example(topic="fleet/meter/", payload=b"")
@example(topic="fleet/vehicle/EV-1", payload=b"\xff" * (LIMITS.max_payload_bytes + 1))
def test_any_topic_and_bytes_are_answered_and_never_raise(topic: str, payload: bytes) -> None:
    decoded = decode_message(topic, payload, NOW, LIMITS)
    check_accounted_for(decoded, payload, LIMITS)
    if not is_valid_topic(topic):
        assert decoded.readings == []
        [reject] = decoded.rejects
        assert reject.device_kind is None
        assert "topic" in reject.reason
        return
    _, kind, device_id = topic.split("/")
    assert (decoded.device_kind, decoded.device_id) == (kind, device_id)
    if len(payload) > LIMITS.max_payload_bytes:
        [reject] = decoded.rejects
        assert "exceeds" in reject.reason
        assert reject.payload == payload[:1024]


# 2. Arbitrary JSON, on valid topics ------------------------------------------------------------

# JSON text with its depth in levels of objects and arrays. Leaves include what JSON forbids
# (NaN, raw control characters, lone surrogates) and what it allows but strains (1e400, 10**400).
odd_chars = st.characters() | st.characters(max_codepoint=0x1F) | st.characters(categories=["Cs"])
json_strings = st.builds(
    lambda text, ascii_only: json.dumps(text, ensure_ascii=ascii_only),
    st.text(alphabet=odd_chars, max_size=12),
    st.booleans(),
)
json_leaves = st.one_of(
    st.sampled_from(
        ["null", "true", "false", "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0"]
    ),
    st.integers(-(10**400), 10**400).map(str),
    st.floats().map(json.dumps),
    json_strings,
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=4).map('"{}"'.format),
).map(lambda text: (text, 0))


def json_containers(
    children: st.SearchStrategy[tuple[str, int]],
) -> st.SearchStrategy[tuple[str, int]]:
    def depth(items: list[tuple[str, int]]) -> int:
        return 1 + max((child_depth for _, child_depth in items), default=0)

    arrays = st.lists(children, max_size=8).map(
        lambda items: ("[" + ",".join(text for text, _ in items) + "]", depth(items))
    )
    objects = st.lists(st.tuples(json_strings, children), max_size=8).map(
        lambda pairs: (
            "{" + ",".join(f"{key}:{text}" for key, (text, _) in pairs) + "}",
            depth([child for _, child in pairs]),
        )
    )
    return arrays | objects


def wrapped(value: tuple[str, int], wrappers: list[bool]) -> tuple[str, int]:
    """``value`` inside arrays (True) and objects (False), innermost first."""
    text, depth = value
    for in_array in wrappers:
        text = f"[{text}]" if in_array else f'{{"a":{text}}}'
    return text, depth + len(wrappers)


json_values = st.builds(
    wrapped,
    st.recursive(json_leaves, json_containers, max_leaves=40),
    st.lists(st.booleans(), max_size=2 * MAX_NESTING + 4),
)
METER_FIELDS = '"kwhConsumedAc":1.5,"voltage":230,"timestamp":"2026-02-09T08:45:00Z"'
VEHICLE_FIELDS = '"soc":50,"kwhDeliveredDc":2,"batteryTemp":20,"timestamp":"2026-02-09T08:45:00Z"'


def in_message(kind: str, value: tuple[str, int], shape: str) -> tuple[str, int]:
    """``value`` as a whole message, or as an unknown field or element beside a sound reading."""
    text, depth = value
    fields = METER_FIELDS if kind == "meter" else VEHICLE_FIELDS
    if shape == "bare":
        return text, depth
    if shape == "field":
        return f'{{{fields},"x":{text}}}', 1 + depth
    if shape == "field in array":
        return f'[{{{fields},"x":{text}}}]', 2 + depth
    return f"[{{{fields}}},{text}]", max(2, 1 + depth)  # "element"


@FEW
@given(
    kind=st.sampled_from(["meter", "vehicle"]),
    device_id=device_ids,
    value=json_values,
    shape=st.sampled_from(["bare", "field", "field in array", "element"]),
)
def test_any_json_is_answered_and_too_deep_is_refused_for_it(
    kind: str, device_id: str, value: tuple[str, int], shape: str
) -> None:
    text, depth = in_message(kind, value, shape)
    payload = text.encode("utf-8", "surrogatepass")  # a lone surrogate as the bytes of one
    decoded = decode_message(f"fleet/{kind}/{device_id}", payload, NOW, DEFAULT_LIMITS)
    check_accounted_for(decoded, payload, DEFAULT_LIMITS)
    if depth > MAX_NESTING:
        assert decoded.readings == []
        [reject] = decoded.rejects
        assert NESTING_REASON in reject.reason
    else:
        assert not any(NESTING_REASON in reject.reason for reject in decoded.rejects)


def _with_deep_field(depth: int) -> bytes:
    return f'{{{METER_FIELDS},"x":{"[" * depth}1{"]" * depth}}}'.encode()


def _alternating(depth: int) -> bytes:
    text, _ = wrapped(("1", 0), [level % 2 == 0 for level in range(depth)])
    return text.encode()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"[" * 5000 + b"]" * 5000, id="arrays-5000"),
        pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, id="objects-5000"),
        pytest.param(_with_deep_field(1500), id="unknown-field-1500"),
        pytest.param(b"[" + _with_deep_field(1500) + b"]", id="unknown-field-1500-in-array"),
        pytest.param(b"[" * 5000, id="unclosed-5000"),
        pytest.param(_with_deep_field(MAX_NESTING), id="unknown-field-one-too-deep"),
        pytest.param(_alternating(MAX_NESTING + 1), id="arrays-and-objects-one-too-deep"),
        pytest.param(_alternating(2 * MAX_NESTING), id="arrays-and-objects-twice-too-deep"),
    ],
)
@pytest.mark.parametrize("kind", ["meter", "vehicle"])
def test_deep_json_is_refused_for_its_nesting(kind: str, payload: bytes) -> None:
    decoded = decode_message(f"fleet/{kind}/D1", payload, NOW, DEFAULT_LIMITS)
    assert decoded.readings == []
    [reject] = decoded.rejects
    assert NESTING_REASON in reject.reason
    assert reject.payload == payload


def test_a_run_of_escaped_quotes_is_judged_in_linear_time() -> None:
    """The nesting check strips strings first; a run of \\" with no closing quote must not make
    that quadratic, or one message at the 256 KiB default limit holds up ingestion for minutes."""
    payload = b"[" * (MAX_NESTING + 1) + b'\\"' * 8192  # 16 KiB: microseconds if linear
    started = time.perf_counter()
    decoded = decode_message("fleet/meter/M1", payload, NOW, DEFAULT_LIMITS)
    elapsed = time.perf_counter() - started
    assert decoded.readings == []
    assert elapsed < 0.25, f"{elapsed:.2f} s to judge {len(payload)} bytes"


# 3. Valid readings round-trip -------------------------------------------------------------------


def numbers(low: float, high: float, *, exclude_low: bool = False) -> st.SearchStrategy[float]:
    """A JSON number in [low, high]: a float, or an integer (accepted where a number is)."""
    first_int = int(low) + 1 if exclude_low else int(low)
    return st.floats(low, high, exclude_min=exclude_low) | st.integers(first_int, int(high)).map(
        float
    )


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Whole microseconds, as isoformat() writes them: the instant sent is the instant received.
received_ats = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))
unknown_keys = st.text(max_size=12).filter(lambda key: key not in FIELD_NAMES)
plain_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
).filter(lambda value: json_depth(value) <= MAX_NESTING - 2)  # room for an array of readings


def json_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    return 0


@st.composite
def sound_readings(
    draw: st.DrawFn, kind: str, device_id: str, received_at: datetime
) -> tuple[dict[str, object], Reading]:
    """A reading as sent (a dict for json.dumps) and as decode_message should give it back."""
    lag = draw(st.timedeltas(-DEFAULT_LIMITS.max_future_skew, DEFAULT_LIMITS.max_age))
    timestamp = (received_at - lag).astimezone(draw(st.just(UTC) | offsets))
    sent_id = draw(st.sampled_from(["omitted", None, device_id]))
    expected: Reading
    if kind == "meter":
        kwh, voltage = draw(numbers(0, 1_000_000)), draw(numbers(0, 1_000, exclude_low=True))
        sent: dict[str, object] = {"kwhConsumedAc": kwh, "voltage": voltage}
        expected = MeterReading(kwh, voltage, timestamp, None if sent_id == "omitted" else sent_id)
        id_key = "meterId"
    else:
        soc, kwh, temp = draw(numbers(0, 100)), draw(numbers(0, 1_000_000)), draw(numbers(-50, 150))
        sent = {"soc": soc, "kwhDeliveredDc": kwh, "batteryTemp": temp}
        expected = VehicleReading(
            soc, kwh, temp, timestamp, None if sent_id == "omitted" else sent_id
        )
        id_key = "vehicleId"
    sent["timestamp"] = timestamp.isoformat().replace(
        "+00:00", draw(st.sampled_from(["Z", "+00:00"]))
    )
    if sent_id != "omitted":
        sent[id_key] = sent_id
    sent |= draw(st.dictionaries(unknown_keys, plain_json, max_size=3))
    return dict(draw(st.permutations(list(sent.items())))), expected


@st.composite
def sound_messages(draw: st.DrawFn) -> tuple[str, bytes, datetime, list[Reading]]:
    kind = draw(st.sampled_from(["meter", "vehicle"]))
    device_id = draw(device_ids)
    received_at = draw(received_ats)
    readings = sound_readings(kind, device_id, received_at)
    if draw(st.booleans()):
        sent, expected = draw(readings)
        body: object = sent
        wanted = [expected]
    else:
        pairs = draw(st.lists(readings, min_size=1, max_size=50))
        body = [sent for sent, _ in pairs]
        wanted = [expected for _, expected in pairs]
    payload = json.dumps(body, indent=draw(st.sampled_from([None, 1]))).encode()
    return f"fleet/{kind}/{device_id}", payload, received_at, wanted


@SOME
@given(message=sound_messages())
def test_sound_readings_come_back_as_sent(
    message: tuple[str, bytes, datetime, list[Reading]],
) -> None:
    topic, payload, received_at, expected = message
    decoded = decode_message(topic, payload, received_at, DEFAULT_LIMITS)
    assert [reject.reason for reject in decoded.rejects] == []
    assert decoded.readings == expected  # Structs: same type, same values, same instants


# 4. Arrays of sound and unsound elements --------------------------------------------------------

TIMESTAMP = "2026-02-09T08:45:00Z"
SOUND_METER = {"kwhConsumedAc": 1.5, "voltage": 230, "timestamp": TIMESTAMP}
unsound_meters = st.one_of(
    st.sampled_from(
        [
            {**SOUND_METER, "voltage": 0},
            {**SOUND_METER, "kwhConsumedAc": -1},
            {**SOUND_METER, "kwhConsumedAc": "1.5"},
            {**SOUND_METER, "timestamp": "2026-02-09T09:00:00Z"},  # in the future
            {**SOUND_METER, "timestamp": "2025-12-01T09:00:00Z"},  # too old
            {**SOUND_METER, "timestamp": "2026-02-09T08:45:00"},  # no zone
            {**SOUND_METER, "meterId": "someone-else"},
            {"voltage": 230, "timestamp": TIMESTAMP},
            {},
            [],
            [SOUND_METER],
            None,
            42,
            "reading",
        ]
    ).map(json.dumps),
    st.just('{"kwhConsumedAc":1e999,"voltage":230,"timestamp":"2026-02-09T08:45:00Z"}'),
)


@st.composite
def mixed_arrays(draw: st.DrawFn, invalid: st.SearchStrategy[int]) -> tuple[bytes, list[bool]]:
    """An array message, and which of its elements are sound."""
    unsound = draw(invalid)
    sound = draw(st.integers(0 if unsound else 1, 30))
    flags = draw(st.permutations([True] * sound + [False] * unsound))
    minutes = iter(range(len(flags)))
    elements = [
        json.dumps({**SOUND_METER, "timestamp": f"2026-02-09T08:{next(minutes) % 46:02d}:00Z"})
        if is_sound
        else draw(unsound_meters)
        for is_sound in flags
    ]
    return ("[" + ",".join(elements) + "]").encode(), flags


@SOME
@given(message=mixed_arrays(st.integers(0, MAX_INVALID_ELEMENTS) | st.just(MAX_INVALID_ELEMENTS)))
def test_unsound_elements_are_rejected_one_by_one_and_the_rest_kept(
    message: tuple[bytes, list[bool]],
) -> None:
    payload, flags = message
    decoded = decode_message("fleet/meter/M1", payload, NOW, DEFAULT_LIMITS)
    check_accounted_for(decoded, payload, DEFAULT_LIMITS)
    sent = json.loads(payload)
    assert decoded.readings == [
        MeterReading(e["kwhConsumedAc"], e["voltage"], datetime.fromisoformat(e["timestamp"]))
        for e, ok in zip(sent, flags, strict=True)
        if ok
    ]
    bad = [index for index, ok in enumerate(flags) if not ok]
    assert len(decoded.rejects) == len(bad)
    for index, reject in zip(bad, decoded.rejects, strict=True):
        assert reject.reason.startswith(f"element {index} of {len(flags)}")
        assert json.loads(reject.payload) == sent[index]


@SOME
@given(message=mixed_arrays(st.integers(MAX_INVALID_ELEMENTS + 1, MAX_INVALID_ELEMENTS + 60)))
def test_an_array_with_too_many_unsound_elements_is_refused_whole(
    message: tuple[bytes, list[bool]],
) -> None:
    payload, _ = message
    decoded = decode_message("fleet/meter/M1", payload, NOW, DEFAULT_LIMITS)
    check_accounted_for(decoded, payload, DEFAULT_LIMITS)
    assert decoded.readings == []
    [reject] = decoded.rejects
    assert f"more than {MAX_INVALID_ELEMENTS}" in reject.reason
    assert reject.payload == payload


# 5. Device ids in the topic ----------------------------------------------------------------------

not_id_chars = st.characters().filter(lambda char: char not in ID_CHARS)
bad_ids = st.one_of(
    device_ids.map(lambda device_id: device_id + "\n"),
    st.builds(
        lambda device_id, char, at: device_id[:at] + char + device_id[at:],
        st.text(alphabet=ID_CHARS, max_size=63),
        not_id_chars,
        st.integers(0, 63),
    ),
    st.text(alphabet=ID_CHARS, min_size=65, max_size=300),
    st.just(""),
)


@FEW
@given(kind=st.sampled_from(["meter", "vehicle"]), device_id=bad_ids)
@example(kind="meter", device_id="M1\n")
@example(kind="vehicle", device_id="\u0660")  # an Arabic-Indic digit: \d, but not [0-9]
@example(kind="vehicle", device_id="\uff2d1")  # a fullwidth M: a letter, but not [A-Za-z]
def test_a_topic_with_a_bad_device_id_is_rejected(kind: str, device_id: str) -> None:
    payload = json.dumps({**SOUND_METER, "soc": 50, "kwhDeliveredDc": 2, "batteryTemp": 20})
    topic = f"fleet/{kind}/{device_id}"
    with pytest.raises(ValueError, match=r"invalid device id|unknown topic"):
        parse_topic(topic)
    decoded = decode_message(topic, payload.encode(), NOW, LIMITS)
    assert decoded.readings == []
    [reject] = decoded.rejects
    assert (reject.device_kind, reject.device_id) == (None, None)
