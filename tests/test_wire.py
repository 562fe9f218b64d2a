"""The wire contract: every message round-trips; anything malformed raises WireError only."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire import Kind, Topics, WireError

DECODERS = {
    Kind.STATUS: wire.decode_status,
    Kind.BIRTH: wire.decode_birth,
    Kind.DATA: wire.decode_data,
    Kind.EVENT: wire.decode_event,
    Kind.CMD: wire.decode_command,
    Kind.ACK: wire.decode_ack,
}

EXAMPLES = [
    (wire.encode_status, wire.decode_status, wire.Status(online=True, session=3, ts_ms=1_700_000_000_000)),
    (
        wire.encode_birth,
        wire.decode_birth,
        wire.Birth(
            session=2,
            software_version="citynerve-edge 0.1.0",
            config_hash="abc",
            ts_ms=5,
            devices=(
                wire.DeviceInfo(
                    id="L-0001",
                    kind="lamp",
                    driver="modbus",
                    points=(
                        wire.PointInfo("level", wire.PointType.INT, "%", 0, 100, True),
                        wire.PointInfo("failed", wire.PointType.BOOL),
                    ),
                ),
                wire.DeviceInfo(
                    id="street-3",
                    kind="lamp_group",
                    driver="dali",
                    points=(wire.PointInfo("level", wire.PointType.FLOAT, "%", 0, 100, True),),
                    members=("L-0001", "L-0002"),
                ),
            ),
        ),
    ),
    (
        wire.encode_data,
        wire.decode_data,
        wire.Data(
            seq=2**40,
            samples=[
                ("L-0001", "level", 1_700_000_000_123, 40, "good"),
                ("L-0001", "power", 1, None, "comm_error"),
            ],
            historical=True,
        ),
    ),
    (
        wire.encode_event,
        wire.decode_event,
        wire.Event(seq=9, ts_ms=1, device="L-1", kind="lamp_failure", active=False, severity="alarm"),
    ),
    (
        wire.encode_event,
        wire.decode_event,
        wire.Event(seq=10, ts_ms=2, device="gw", kind="buffer_overflow", severity="warning", historical=True),
    ),
    (
        wire.encode_command,
        wire.decode_command,
        wire.Command(
            id="c1", device="L-1", point="level", value=40.5, expires_at_ms=10, priority=8, source="ops"
        ),
    ),
    (
        wire.encode_ack,
        wire.decode_ack,
        wire.Ack(id="c1", status=wire.AckStatus.REJECTED, detail="read-only", ts_ms=3, value=None),
    ),
]


@pytest.mark.parametrize(("encode", "decode", "message"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(encode, decode, message) -> None:
    assert decode(encode(message)) == message


def test_topics_build_and_parse() -> None:
    t = Topics("city/v1")
    assert t.gateway("cab-7", Kind.DATA) == "city/v1/gw/cab-7/data"
    assert t.parse("city/v1/gw/cab-7/data") == ("cab-7", Kind.DATA)
    assert t.all_gateways(Kind.ACK) == "city/v1/gw/+/ack"
    assert t.hub_status() == "city/v1/hub/status"


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("cn/v1/gw/cab-7/nope", "unknown message kind"),
        ("cn/v1/gw/cab-7/data/extra", "is not"),
        ("other/gw/cab-7/data", "is not under"),
        ("cn/v1/gw/+/data", "invalid gateway id"),
    ],
)
def test_bad_topics_are_rejected_precisely(topic: str, why: str) -> None:
    with pytest.raises(WireError, match=why):
        Topics().parse(topic)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "expected a map"),
        (msgpack.packb({"v": 99, "seq": 1, "samples": []}), "unsupported schema version 99"),
        (msgpack.packb({"v": 1, "samples": []}), "missing field 'seq'"),
        (msgpack.packb({"v": 1, "seq": "1", "samples": []}), "field 'seq' has type str"),
        (msgpack.packb({"v": 1, "seq": True, "samples": []}), "field 'seq' has type bool"),
        (msgpack.packb({"v": 1, "seq": 1, "samples": [["d", "p", 1, 2.0]]}), "sample 0 is not"),
        (msgpack.packb({"v": 1, "seq": 1, "samples": [["d", "p", 1, "x", "good"]]}), "sample 0 is not"),
        (msgpack.packb({"v": 1, "seq": 1, "samples": [["d", "p", 1, 1, "great"]]}), "sample 0 is not"),
        (msgpack.packb({"v": 1, "seq": -1, "samples": []}), "negative seq"),
    ],
)
def test_malformed_data_is_explained(payload: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        wire.decode_data(payload)


def test_ack_with_unknown_status_is_rejected() -> None:
    with pytest.raises(WireError, match="unknown status 'great'"):
        wire.decode_ack(msgpack.packb({"v": 1, "id": "x", "status": "great"}))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
)
_msgpack_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(DECODERS)), body=_msgpack_values)
def test_random_structures_raise_only_wire_error(kind: Kind, body: object) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    try:
        DECODERS[kind](payload)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(DECODERS)), data=st.data())
def test_mutated_valid_messages_raise_only_wire_error(kind: Kind, data: st.DataObject) -> None:
    encode, _, message = next(e for e in EXAMPLES if e[1] is DECODERS[kind])
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        DECODERS[kind](bytes(raw[:cut]))
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["v", "seq", "samples", "hist"]), _msgpack_values, max_size=4))
def test_data_fields_with_wrong_types_raise_only_wire_error(body: dict) -> None:
    body.setdefault("v", 1)
    try:
        wire.decode_data(msgpack.packb(body, use_bin_type=True))
    except WireError:
        pass


def test_live_event_carries_no_hist_key_and_old_payloads_decode_live() -> None:
    import msgpack

    live = wire.encode_event(wire.Event(seq=1, ts_ms=1, device="d", kind="k"))
    assert "hist" not in msgpack.unpackb(live)
    assert wire.decode_event(live).historical is False
    hist = wire.encode_event(wire.Event(seq=1, ts_ms=1, device="d", kind="k", historical=True))
    assert msgpack.unpackb(hist)["hist"] is True


def test_relinquish_command_round_trips_and_set_is_the_default() -> None:
    cmd = wire.Command(
        id="c2", device="town-hall", point="zone-1-setpoint", value=None, expires_at_ms=10,
        action=wire.CommandAction.RELINQUISH,
    )
    assert wire.decode_command(wire.encode_command(cmd)) == cmd
    # A command from an older hub has no action: it is a write.
    old = msgpack.packb({"v": 1, "id": "c3", "device": "d", "point": "p", "value": 1, "expires_at": 5})
    assert wire.decode_command(old).action is wire.CommandAction.SET
    # and a set command is encoded without the key, so older edges read it unchanged
    plain = wire.Command(id="c4", device="d", point="p", value=2, expires_at_ms=5)
    assert "action" not in msgpack.unpackb(wire.encode_command(plain))


def test_unknown_command_action_is_a_wire_error() -> None:
    bad = msgpack.packb(
        {"v": 1, "id": "c5", "device": "d", "point": "p", "value": 1, "expires_at": 5, "action": "toggle"}
    )
    with pytest.raises(WireError, match="cmd: unknown action 'toggle' \\(known: set, relinquish\\)"):
        wire.decode_command(bad)
