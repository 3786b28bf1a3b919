"""An independent reading of CONNECT-IP on the wire: a capture of an in-memory session (real
aioquic QUIC + HTTP/3, tests/unit/quic_harness.py) decrypted by Wireshark's QUIC and HTTP/3
dissectors with the TLS keylog, as far as they go. Wireshark 4.0 shows the SETTINGS, the HTTP/3
frames of the request stream and the QUIC DATAGRAM frames; it decodes neither QPACK (without
nghttp3) nor capsules, so the DATA frames' payloads (the capsules) and the datagrams are compared
with our own encodings of what each side sent. Skipped where tshark is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import wrpcap

from tests.unit.quic_harness import Link
from tests.unit.test_connect_ip_session import (
    CLIENT_V4,
    CLIENT_V6,
    FULL_TUNNEL,
    connect,
    ipv4,
    ipv6,
    opened,
)
from tunnel.wire.connect_ip import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    RequestedAddress,
    RouteAdvertisement,
)
from tunnel.wire.http_datagram import H3Datagram, encode_ip_packet

TSHARK = shutil.which("tshark")
CLIENT, SERVER = ("10.0.0.2", 40000), ("10.0.0.1", 4433)  # the harness's first path
FIELDS = [
    "ip.src",
    "http3.frame_type",
    "http3.frame_payload",
    "http3.settings.id",
    "http3.settings.value",
    "quic.dg",
]


def record(link: Link, sent: list[tuple[Link, bytes, float]]) -> None:
    """Keep a copy of every datagram `link` is given (an instance attribute shadows the method)."""
    send = link.send

    def recording(data: bytes, now: float) -> None:
        sent.append((link, data, now))
        send(data, now)

    link.send = recording  # type: ignore[method-assign]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt install tshark)")
def test_wireshark_reads_settings_capsule_frames_and_datagrams(tmp_path: Path) -> None:
    keylog = tmp_path / "client.keys"
    sent: list[tuple[Link, bytes, float]] = []
    with keylog.open("w") as secrets:
        net, path = connect(secrets_log=secrets)
        record(path.up_link, sent)
        record(path.down_link, sent)
        client, server = opened(net, path)
        up, down = ipv4("10.8.0.2", "192.0.2.1"), ipv6("2001:db8::1", "fd00:8::2")
        assert client.send_packet(up).sent and server.send_packet(down).sent
        net.run(0.5)
    frames = []
    for link, data, now in sent:
        (src, sport), (dst, dport) = (CLIENT, SERVER) if link is path.up_link else (SERVER, CLIENT)
        frame = IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / data
        frame.time = now
        frames.append(frame)
    pcap = tmp_path / "masque.pcap"
    wrpcap(str(pcap), frames)

    argv = [TSHARK, "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}"]
    argv += ["-d", f"udp.port=={SERVER[1]},quic", "-T", "fields", "-E", "separator=|"]
    for name in FIELDS:
        argv += ["-e", name]
    # an empty HOME: no Wireshark profile or plugin of the machine changes the reading
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr
    rows = [dict(zip(FIELDS, line.split("|"), strict=True)) for line in done.stdout.splitlines()]

    def values(side: str, field: str) -> list[str]:
        return [v for row in rows if row["ip.src"] == side for v in row[field].split(",") if v]

    for side in (CLIENT[0], SERVER[0]):
        settings = dict(
            zip(
                values(side, "http3.settings.id"), values(side, "http3.settings.value"), strict=True
            )
        )
        # RFC 9220 §3 SETTINGS_ENABLE_CONNECT_PROTOCOL (0x08), RFC 9297 §2.1.1 H3_DATAGRAM (0x33)
        assert settings["8"] == "1" and settings["51"] == "1"

    def data_frames(side: str) -> list[bytes]:
        found = []
        for row in rows:
            if row["ip.src"] != side:
                continue
            types, payloads = (
                row["http3.frame_type"].split(","),
                row["http3.frame_payload"].split(","),
            )
            found += [bytes.fromhex(p) for t, p in zip(types, payloads, strict=False) if t == "0"]
        return found

    assert data_frames(CLIENT[0]) == [
        AddressRequest(
            (
                RequestedAddress(1, IPv4Network("0.0.0.0/32")),
                RequestedAddress(2, IPv6Network("::/128")),
            )
        ).encode()
    ]
    assert data_frames(SERVER[0]) == [
        AddressAssign((AssignedAddress(0, CLIENT_V4), AssignedAddress(0, CLIENT_V6))).encode(),
        RouteAdvertisement(FULL_TUNNEL).encode(),
        AddressAssign((AssignedAddress(1, CLIENT_V4), AssignedAddress(2, CLIENT_V6))).encode(),
    ]
    assert [bytes.fromhex(v) for v in values(CLIENT[0], "quic.dg")] == [
        H3Datagram(0, encode_ip_packet(up)).encode()
    ]
    assert [bytes.fromhex(v) for v in values(SERVER[0], "quic.dg")] == [
        H3Datagram(0, encode_ip_packet(down)).encode()
    ]
