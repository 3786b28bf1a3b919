"""Test certificates from scripts/make-certs: the one way tests make them.

`lab_certs` (a session fixture in tests/conftest.py) makes one CA per run with the clients of
`CLIENTS` and a `foreign/` CA that also issued an "alice"; tests read it and never write into
it. A test that revokes certificates works on a copy (`copy_ca`); a test that needs a CA of its
own calls `make_certs`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKE_CERTS = REPO / "scripts" / "make-certs"
CLIENTS = ("alice", "bob", "carol", "dave", "client")
"""Client certificates of the session CA (CN = the name). Which of them a concentrator admits
is the test's configuration: e.g. alice as a [[client]], carol and dave through [pool], bob
signed by the CA but served by nobody, "client" the default name of make-certs."""


def make_certs(out: Path, *args: str) -> Path:
    """Run scripts/make-certs --out OUT ARGS (a new CA, or --revoke into an existing one)."""
    subprocess.run(
        [sys.executable, str(MAKE_CERTS), "--out", str(out), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def make_lab_certs(out: Path) -> Path:
    """The session CA (see the module doc): OUT/{ca,concentrator,<client>}.{pem,key} and
    OUT/foreign/{ca,concentrator,alice}.{pem,key}."""
    make_certs(out, "--clients", *CLIENTS)
    make_certs(out / "foreign", "--clients", "alice")
    return out


def copy_ca(certs: Path, into: Path) -> Path:
    """A writable copy of the CA in `certs` (every .pem and .key, not foreign/), for tests that
    revoke certificates or add a CRL."""
    into.mkdir(parents=True, exist_ok=True)
    for item in certs.iterdir():
        if item.is_file() and item.suffix in (".pem", ".key"):
            shutil.copy2(item, into / item.name)
    return into
