"""The client program's supervision (tunnel/aio/client.py), without root: no access, an unbound
socket towards a concentrator that is not there, no TUN. A bug anywhere — the agent, a loop
callback, a task — stops the program with exit 1 and its traceback in the log; it never leaves a
client that says "up" with part of it dead (issue 11 §4). The same end to end, with a real
concentrator: tests/integration/test_qtun_client.py::test_a_bug_stops_the_client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.unit.quic_harness import throwaway_certificate
from tunnel.agents.client import ClientAgent
from tunnel.aio.client import Client
from tunnel.config import ClientConfig, ConfigError, parse_client_config
from tunnel.user_error import EXIT_OK, EXIT_RUNTIME, RuntimeFailure

# real sockets and a real event loop for seconds each: not in `make check`'s inner loop
pytestmark = pytest.mark.slow

STATUS_KEYS = {  # README "Status file", the client
    "role", "name", "pid", "time", "mode", "state", "session_id", "scheduler", "access_reports",
    "failback", "payload", "tun", "accesses", "reorder", "counters", "inbound",
}  # fmt: skip


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(tmp_path: Path) -> ClientConfig:
    cert, key = throwaway_certificate()
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return parse_client_config(
        f"""
[concentrator]
address = "127.0.0.1"
port = {_free_udp_port()}
[tun]
name = "qcptest0"
addresses = ["10.8.0.3/32"]
[tls]
ca = "cert.pem"
cert = "cert.pem"
key = "key.pem"
[limits]
idle_timeout = 1.0
[observability]
status_file = "status.json"
status_interval = 0.1
""",
        base_dir=tmp_path,
    )


def _run(config: ClientConfig, before: object = None) -> int:
    async def main() -> int:
        client = Client(config)
        if callable(before):
            before(client)
        return await asyncio.wait_for(client.main(), 10)

    return asyncio.run(main())


def _status(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / "status.json").read_text())
    return data


def test_a_bug_in_the_agent_stops_the_program_with_exit_1_and_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: ClientAgent, now: float) -> None:
        raise RuntimeError("injected agent bug")

    # the agent's first timer: the handshake deadline (1 s: the idle timeout caps it)
    monkeypatch.setattr(ClientAgent, "handle_timer", broken)
    with caplog.at_level(logging.ERROR, logger="qtun.client"):
        assert _run(_config(tmp_path)) == EXIT_RUNTIME
    (record,) = [r for r in caplog.records if "internal error in" in r.getMessage()]
    assert record.exc_info is not None and str(record.exc_info[1]) == "injected agent bug"
    assert _status(tmp_path)["state"] == "stopped"


def test_a_failing_loop_callback_or_task_stops_the_program(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise ValueError("injected callback bug")

    async def failing_task() -> None:
        raise KeyError("injected task bug")

    config = _config(tmp_path)
    with caplog.at_level(logging.ERROR, logger="qtun.client"):
        assert _run(config, lambda c: c.loop.call_later(0.2, boom)) == EXIT_RUNTIME
        assert _run(config, lambda c: c._spawn(failing_task(), "failing")) == EXIT_RUNTIME
    logged = [str(r.exc_info[1]) for r in caplog.records if r.exc_info is not None]
    assert logged == ["injected callback bug", "'injected task bug'"]


def test_a_user_error_stops_the_program_with_its_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(self: ClientAgent, now: float) -> None:
        raise RuntimeFailure("TUN qcptest0 is busy: pick another name")

    monkeypatch.setattr(ClientAgent, "start", busy)
    with pytest.raises(RuntimeFailure, match="busy"):
        _run(_config(tmp_path))
    assert _status(tmp_path)["state"] == "stopped"


def test_a_ca_file_holding_no_certificate_is_refused_before_the_first_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aioquic only keeps tls.ca's path: a garbage CA used to fail in every handshake, logged
    as an internal error and retried for ever, never naming the file."""

    def connect(self: ClientAgent, now: float) -> None:
        raise AssertionError("the client started connecting")

    monkeypatch.setattr(ClientAgent, "start", connect)
    config = _config(tmp_path)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = dataclasses.replace(
        config, tls=dataclasses.replace(config.tls, ca=tmp_path / "ca.pem")
    )
    with pytest.raises(ConfigError) as info:
        _run(config)
    assert str(info.value) == (
        f"tls.ca {tmp_path / 'ca.pem'} holds no PEM certificate: give the CA file that issued the "
        "concentrator's certificate (the ca.pem made by scripts/make-certs)"
    )


def test_sigterm_stops_cleanly_and_the_status_has_every_key(tmp_path: Path) -> None:
    def stop_soon(client: Client) -> None:
        client.loop.call_later(0.3, client.request_stop, 15)

    assert _run(_config(tmp_path), stop_soon) == EXIT_OK
    status = _status(tmp_path)
    assert set(status) == STATUS_KEYS and status["state"] == "stopped"
    (access,) = status["accesses"]  # type: ignore[misc]
    assert access["name"] == "default" and not access["connected"]


def test_a_key_that_is_not_the_certificates_is_refused_before_the_first_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tls.key of another pair than tls.cert: TLS loads both without comparing, and the
    concentrator then refused every handshake, the client retrying for ever without a word on
    its files."""

    def connect(self: ClientAgent, now: float) -> None:
        raise AssertionError("the client started connecting")

    monkeypatch.setattr(ClientAgent, "start", connect)
    config = _config(tmp_path)
    _, other = throwaway_certificate("another.test")  # another pair (one is made per name)
    (tmp_path / "other.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    config = dataclasses.replace(
        config, tls=dataclasses.replace(config.tls, key=tmp_path / "other.pem")
    )
    with pytest.raises(ConfigError, match=r"tls.key .*other.pem is not the key of tls.cert"):
        _run(config)
