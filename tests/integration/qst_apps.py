"""Small TCP applications for test_stream_mode.py, run inside qst-* namespaces with
`python -m tests.integration.qst_apps <command> ...`. Each prints one "RESULT <json>" line and
bounds its own lifetime.

Destination side (servers):
  serve-halfclose PORT [BIND]  read until EOF, then answer "got <n> <sha256>" and close
                        (BIND: listen on that address only; default every address)
  serve-echo PORT       echo each connection until EOF, then close (many at once)
  serve-reset PORT      accept, read a little, then RST (SO_LINGER 0)
  serve-watch PORT      accept one connection, print "GOT" at its first data, report how it
                        ended (EOF or reset)
  serve-bulk PORT N     send N bytes to each connection, then close
Application side (clients):
  halfclose HOST PORT N     send N bytes, shutdown(SHUT_WR), read the answer
  reset HOST PORT           connect, send, print "SENT", RST once a line arrives on stdin
  expect-reset HOST PORT    connect, send, expect the connection to be reset
  many HOST PORT K SIZE     K concurrent connections, each echoes SIZE bytes, verified
  slow HOST PORT K RATE SECS  K connections read at RATE bytes/s for SECS s, then held
  socks PROXY_PORT HOST PORT  SOCKS5 CONNECT, print the reply code
  connect-outcome HOST PORT   connect; report connect()'s outcome (errno name) and its time; if
                              connected, one echo round trip
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from ipaddress import ip_address

LIFETIME = 20.0


def result(**fields: object) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def listener(port: int, bind: str = "::") -> socket.socket:
    family = socket.AF_INET6 if ip_address(bind).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((bind, port))
    sock.listen(512)
    sock.settimeout(LIFETIME)
    print("READY", flush=True)
    return sock


def connect(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect((host, port))
    return sock


def rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def serve_halfclose(port: int, bind: str = "::") -> None:
    with listener(port, bind) as lsock:
        conn, _ = lsock.accept()
        conn.settimeout(20)
        data = read_all(conn)
        time.sleep(0.2)  # the other direction stays open after the peer's FIN
        conn.sendall(f"got {len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        conn.close()
        result(received=len(data))


def serve_echo(port: int) -> None:
    def echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
            except OSError:
                pass

    with listener(port) as lsock:
        while True:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()


def serve_reset(port: int) -> None:
    with listener(port) as lsock:
        conn, _ = lsock.accept()
        conn.settimeout(20)
        conn.recv(10)
        rst(conn)
        result(reset_sent=True)


def serve_watch(port: int) -> None:
    with listener(port) as lsock:
        conn, _ = lsock.accept()
        conn.settimeout(20)
        total = 0
        try:
            while chunk := conn.recv(65536):
                if not total:
                    print("GOT", flush=True)
                total += len(chunk)
            ended = "eof"
        except ConnectionResetError:
            ended = "reset"
        except TimeoutError:
            ended = "timeout"
        result(ended=ended, received=total)


def serve_bulk(port: int, size: int) -> None:
    block = os.urandom(65536)
    with listener(port) as lsock:
        while True:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                return

            def send(conn: socket.socket = conn) -> None:
                with conn:
                    sent = 0
                    try:
                        while sent < size:
                            conn.sendall(block[: min(len(block), size - sent)])
                            sent += min(len(block), size - sent)
                    except OSError:
                        pass

            threading.Thread(target=send, daemon=True).start()


def halfclose(host: str, port: int, size: int) -> None:
    payload = os.urandom(size)
    with connect(host, port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock).decode()
    result(answer=answer, expected=f"got {size} {hashlib.sha256(payload).hexdigest()}")


def reset(host: str, port: int) -> None:
    sock = connect(host, port)
    sock.sendall(b"hello before reset")
    print("SENT", flush=True)
    sys.stdin.readline()  # the test says when: once the destination has the data
    rst(sock)
    result(reset_sent=True)


def expect_reset(host: str, port: int) -> None:
    try:
        sock = connect(host, port)
    except OSError as exc:
        result(connected=False, error=type(exc).__name__)
        return
    outcome = "eof"
    try:
        sock.sendall(b"x" * 100)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                break
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    except OSError as exc:
        outcome = type(exc).__name__
    result(connected=True, outcome=outcome)


def connect_outcome(host: str, port: int) -> None:
    started = time.monotonic()
    try:
        sock = connect(host, port)
    except OSError as exc:
        name = errno_name(exc)
        result(connected=False, error=name, seconds=time.monotonic() - started)
        return
    seconds = time.monotonic() - started
    sock.sendall(b"ping")
    answer = sock.recv(4)
    sock.close()
    result(connected=True, echo=answer.decode(errors="replace"), seconds=seconds)


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def send_and_finish(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)


def many(host: str, port: int, count: int, size: int) -> None:
    ok = 0
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal ok
        payload = os.urandom(size)
        try:
            with connect(host, port) as sock:
                writer = threading.Thread(target=send_and_finish, args=(sock, payload))
                writer.start()
                echoed = read_all(sock)
                writer.join()
            with lock:
                if echoed == payload:
                    ok += 1
                else:
                    errors.append(f"{index}: {len(echoed)} bytes back")
        except OSError as exc:
            with lock:
                errors.append(f"{index}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIFETIME)
    result(ok=ok, errors=errors[:5], failed=len(errors))


def slow(host: str, port: int, count: int, rate: int, seconds: float) -> None:
    """`count` connections, each read at `rate` bytes/s for `seconds`; then print "SLOW" and
    keep them open (unread) until a line arrives on stdin."""
    socks_: list[socket.socket] = []
    got = [0] * count

    def read(index: int, sock: socket.socket) -> None:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            chunk = sock.recv(min(16384, rate // 10))
            if not chunk:
                break
            got[index] += len(chunk)
            time.sleep(len(chunk) / rate)

    for _ in range(count):
        sock = connect(host, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        socks_.append(sock)
    threads = [threading.Thread(target=read, args=(i, s)) for i, s in enumerate(socks_)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    print(f"SLOW {sum(got)}", flush=True)
    sys.stdin.readline()
    for sock in socks_:
        sock.close()
    result(received=sum(got))


def socks(proxy_port: int, host: str, port: int) -> None:
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=20) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        address = ip_address(host)
        atyp = 1 if address.version == 4 else 4
        sock.sendall(bytes([5, 1, 0, atyp]) + address.packed + port.to_bytes(2, "big"))
        reply = sock.recv(4)
        code = reply[1] if len(reply) > 1 else -1
        echoed = b""
        if code == 0:
            sock.recv(6 if atyp == 1 else 18)
            sock.sendall(b"through socks")
            sock.shutdown(socket.SHUT_WR)
            echoed = read_all(sock)
        result(reply=code, echoed=echoed.decode())


def main() -> None:
    command, *rest = sys.argv[1:]
    commands = {
        "serve-halfclose": lambda: serve_halfclose(int(rest[0]), *rest[1:2]),
        "serve-echo": lambda: serve_echo(int(rest[0])),
        "serve-reset": lambda: serve_reset(int(rest[0])),
        "serve-watch": lambda: serve_watch(int(rest[0])),
        "serve-bulk": lambda: serve_bulk(int(rest[0]), int(rest[1])),
        "halfclose": lambda: halfclose(rest[0], int(rest[1]), int(rest[2])),
        "reset": lambda: reset(rest[0], int(rest[1])),
        "expect-reset": lambda: expect_reset(rest[0], int(rest[1])),
        "many": lambda: many(rest[0], int(rest[1]), int(rest[2]), int(rest[3])),
        "slow": lambda: slow(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), float(rest[4])),
        "socks": lambda: socks(int(rest[0]), rest[1], int(rest[2])),
        "connect-outcome": lambda: connect_outcome(rest[0], int(rest[1])),
    }
    commands[command]()


if __name__ == "__main__":
    main()
