"""testbed/decode.py: what it takes from a capture directory, how it merges the keylogs and lays
out its lines, what it says of a file that is no capture (tshark, which `make deps` installs);
the decoding itself: tests/integration/test_dissector.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testbed.decode import Message, decode_directory, find_inputs, format_lines, merge_keylogs
from tunnel.user_error import RuntimeFailure, UsageError

SECRET = b"CLIENT_TRAFFIC_SECRET_0 " + b"ab" * 32 + b" " + b"cd" * 32


def test_pcaps_and_keylogs_are_found_by_suffix_and_content(tmp_path: Path) -> None:
    (tmp_path / "run1").mkdir()
    (tmp_path / "wifi.pcap").write_bytes(b"\xd4\xc3\xb2\xa1")
    (tmp_path / "run1" / "5g.pcapng").write_bytes(b"\x0a\x0d\x0d\x0a")
    (tmp_path / "run1" / "conc.keys").write_bytes(b"# SSL/TLS secrets log file\n" + SECRET)
    (tmp_path / "client.log").write_text("INFO connected\n")  # not a keylog
    pcaps, keylogs = find_inputs(tmp_path)
    assert pcaps == [tmp_path / "run1" / "5g.pcapng", tmp_path / "wifi.pcap"]
    assert keylogs == [tmp_path / "run1" / "conc.keys"]


@pytest.mark.parametrize(
    ("files", "sentence"),
    [
        ({}, "no pcap files in"),
        ({"wifi.pcap": b"\xd4\xc3\xb2\xa1"}, "no TLS keylog in"),
    ],
)
def test_what_is_missing_is_one_sentence(
    tmp_path: Path, files: dict[str, bytes], sentence: str
) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(UsageError, match=sentence) as caught:
        find_inputs(tmp_path)
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        find_inputs(tmp_path / "missing")


def test_keylogs_are_merged_line_by_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.keylog", tmp_path / "b.keylog"
    a.write_bytes(SECRET)  # no final newline: the next file must still start a line
    b.write_bytes(SECRET + b"\n")
    merged = merge_keylogs([a, b], tmp_path / "merged")
    assert merged.read_bytes().splitlines() == [SECRET, SECRET]


def test_lines_are_relative_to_the_first_packet_and_aligned() -> None:
    messages = [
        Message(100.5, "wifi", "client->concentrator", "New Session [stream 2]", 7),
        Message(101.25, "5g", "concentrator->client", "Session ID: ab [stream 3]", 3),
    ]
    lines = format_lines(messages, start=100.0)
    assert [line.split(maxsplit=3) for line in lines] == [
        ["seconds", "access", "direction", "message"],
        ["0.500000", "wifi", "client->concentrator", "New Session [stream 2]"],
        ["1.250000", "5g", "concentrator->client", "Session ID: ab [stream 3]"],
    ]
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # one access column
    assert format_lines(messages, 100.0, absolute=True)[0].split()[0] == "time"


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed: make deps")
def test_a_file_that_is_no_capture_is_one_sentence_and_an_empty_one_is_skipped(
    tmp_path: Path,
) -> None:
    (tmp_path / "c1.keys").write_bytes(SECRET + b"\n")
    (tmp_path / "wifi.pcap").write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00")  # cut short in its header
    messages, start, warnings = decode_directory(tmp_path)
    assert messages == [] and start is None and warnings == []
    (tmp_path / "5g.pcap").write_bytes(b"not a pcap")
    with pytest.raises(RuntimeFailure, match=r"tshark failed on .*5g\.pcap .*readable pcap\?$"):
        decode_directory(tmp_path)
