"""What the concentrator does with a session's QoS Flow Indication: a site policy that marks the
packets it forwards for that session with a DSCP (RFC 2474), so the network behind the
concentrator can treat them as the client asked.

The session draft's New Session TLV (§6.1.1) "can contain an opaque value giving an indication
on the type of traffic conveyed over this session. The concentrator can use this indication for
QoS purposes for instance." The value is opaque, so its meaning is a site's choice: this module
maps configured values (`[[qos]]` tables of the concentrator's configuration) to a DSCP. A value
no table names leaves packets as the client sent them.

Values are written as text in configurations and status files: printable ASCII as itself
(`video`), anything else as `0x` and hex digits (`0x2a01`). `qos_label` and `qos_value` are each
other's inverse, so a status file's label can be pasted into a configuration.

Marking rewrites the 6 DSCP bits of the IPv4 TOS / IPv6 Traffic Class byte and keeps the 2 ECN
bits (RFC 3168); the IPv4 header checksum is updated incrementally (RFC 1624 eqn. 3), so a
marked packet costs one 16-bit sum, not a header walk.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Final

from tunnel.wire.tlv import MAX_TLV_VALUE_SIZE

DSCP_NAMES: Final[Mapping[str, int]] = {
    # RFC 2474 §4.2.2 class selectors, RFC 2597 assured forwarding, RFC 3246 expedited
    # forwarding, RFC 5865 VOICE-ADMIT, RFC 8622 lower effort
    **{f"CS{n}": n << 3 for n in range(8)},
    **{f"AF{c}{d}": (c << 3) | (d << 1) for c in range(1, 5) for d in range(1, 4)},
    "EF": 46,
    "VOICE-ADMIT": 44,
    "LE": 1,
}
MAX_DSCP: Final = 63
_HEX_LABEL: Final = re.compile(r"0x([0-9a-fA-F]{2})*")
_PRINTABLE: Final = frozenset(string.printable.encode()) - frozenset(b"\t\n\r\x0b\x0c")


def qos_label(value: bytes) -> str:
    """How a QoS Flow Indication is written: itself if printable ASCII (and not read as hex),
    else `0x` and its bytes in hex."""
    if value and all(b in _PRINTABLE for b in value):
        text = value.decode("ascii")
        if not _HEX_LABEL.fullmatch(text):
            return text
    return "0x" + value.hex()


def qos_value(label: str) -> bytes:
    """The bytes a label names (inverse of `qos_label`); ValueError says what is wrong."""
    if _HEX_LABEL.fullmatch(label):
        value = bytes.fromhex(label[2:])
    else:
        try:
            value = label.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"QoS value {label!r} is not ASCII: write other bytes as 0x and hex digits"
            ) from None
    if len(value) > MAX_TLV_VALUE_SIZE:
        raise ValueError(
            f"QoS value {label!r} is {len(value)} bytes, more than a TLV holds"
            f" ({MAX_TLV_VALUE_SIZE})"
        )
    return value


def dscp_value(name: str | int) -> int:
    """A DSCP given as 0-63 or by name (EF, AF41, CS1, ...); ValueError says what is wrong."""
    if isinstance(name, int) and not isinstance(name, bool):
        if 0 <= name <= MAX_DSCP:
            return name
    elif isinstance(name, str) and name.upper() in DSCP_NAMES:
        return DSCP_NAMES[name.upper()]
    raise ValueError(f"DSCP {name!r} is neither 0-{MAX_DSCP} nor a name like EF, AF41 or CS1")


class QosPolicy:
    """The site's mapping from QoS Flow Indications to DSCPs."""

    def __init__(self, marks: Iterable[tuple[bytes, int]] = ()) -> None:
        self._marks: dict[bytes, int] = {}
        for value, dscp in marks:
            if value in self._marks:
                raise ValueError(f"QoS value {qos_label(value)!r} is mapped twice")
            self._marks[bytes(value)] = dscp_value(dscp)

    def dscp_for(self, qos: bytes) -> int | None:
        """The DSCP for a session that asked for `qos` (None: leave its packets alone)."""
        return self._marks.get(qos)

    def __bool__(self) -> bool:
        return bool(self._marks)


def set_dscp(packet: bytes, dscp: int) -> bytes:
    """`packet` (IPv4 or IPv6) with its DSCP set to `dscp`, ECN bits kept; a packet too short
    for its header or of another version is returned as it is (the ingress filter, which runs
    first, has already dropped those)."""
    if not packet:
        return packet
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        old = packet[1]
        new = (dscp << 2) | (old & 0x03)
        if new == old:
            return packet
        # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), on the 16-bit word holding the TOS byte.
        old_word = (packet[0] << 8) | old
        new_word = (packet[0] << 8) | new
        checksum = (packet[10] << 8) | packet[11]
        total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        checksum = ~total & 0xFFFF
        return b"".join(
            (packet[:1], bytes((new,)), packet[2:10], checksum.to_bytes(2, "big"), packet[12:])
        )
    if version == 6 and len(packet) >= 40:
        # Traffic Class: the low 4 bits of byte 0 and the high 4 bits of byte 1
        traffic_class = ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
        new = (dscp << 2) | (traffic_class & 0x03)
        first = (packet[0] & 0xF0) | (new >> 4)
        second = ((new & 0x0F) << 4) | (packet[1] & 0x0F)
        return bytes((first, second)) + packet[2:]
    return packet


__all__ = [
    "DSCP_NAMES",
    "MAX_DSCP",
    "QosPolicy",
    "dscp_value",
    "qos_label",
    "qos_value",
    "set_dscp",
]
