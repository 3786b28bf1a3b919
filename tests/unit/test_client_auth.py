"""tunnel.policy.client_auth beyond the chain check (tests/unit/test_make_certs.py has that): a
certificate whose subject does not parse, revocation lists and their reloads, explicit pool
admission."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509

from testbed.hostile import unparsable_subject_certificate
from tests.certs import copy_ca, make_certs
from tunnel.policy.client_auth import (
    Admission,
    ClientAuthError,
    ClientVerifier,
    RevocationList,
    describe_subject,
)

NOW = datetime.datetime.now(datetime.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_unparsable_subject_is_a_refusal_not_a_crash(lab_certs: Path) -> None:
    # Before the fix: ValueError escaped from formatting the refusal and the connection stayed
    # open, unauthenticated (issue 10 item 1).
    bad, _ = unparsable_subject_certificate()
    with pytest.raises(ValueError):
        bad.subject.rfc4514_string()
    assert "unparsable subject" in describe_subject(bad)
    verifier = ClientVerifier((lab_certs / "ca.pem").read_bytes())
    with pytest.raises(ClientAuthError):
        verifier.verify(bad, [], NOW)


def test_revoked_certificate_is_refused_and_the_list_is_reloaded_on_change(
    lab_certs: Path, tmp_path: Path
) -> None:
    out = copy_ca(lab_certs, tmp_path / "ca")
    make_certs(out, "--revoke")  # an empty list
    revocations = RevocationList(out / "crl.pem")
    verifier = ClientVerifier((out / "ca.pem").read_bytes(), revocations)
    assert verifier.verify(load(out / "bob.pem"), [], NOW) == "bob"
    make_certs(out, "--revoke", "bob")
    assert revocations.refresh() is None and revocations.reloads == 2
    with pytest.raises(ClientAuthError, match="is revoked"):
        verifier.verify(load(out / "bob.pem"), [], NOW)
    assert verifier.verify(load(out / "alice.pem"), [], NOW) == "alice"
    assert revocations.refresh() is None and revocations.reloads == 2  # unchanged: no re-read


def test_a_broken_replacement_keeps_the_last_good_list(lab_certs: Path, tmp_path: Path) -> None:
    out = copy_ca(lab_certs, tmp_path / "ca")
    make_certs(out, "--revoke", "bob")
    revocations = RevocationList(out / "crl.pem")
    verifier = ClientVerifier((out / "ca.pem").read_bytes(), revocations)
    (out / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    os.utime(out / "crl.pem", ns=(1, 1))  # a different mtime for certain
    problem = revocations.refresh()
    assert problem is not None and "not a PEM or DER" in problem
    with pytest.raises(ClientAuthError, match="is revoked"):
        verifier.verify(load(out / "bob.pem"), [], NOW)
    (out / "crl.pem").unlink()
    assert "keeping the list" in (revocations.refresh() or "")


def test_a_crl_of_another_ca_or_no_crl_at_all_is_a_start_error(
    lab_certs: Path, tmp_path: Path
) -> None:
    ours, theirs = lab_certs, copy_ca(lab_certs / "foreign", tmp_path / "theirs")
    make_certs(theirs, "--revoke", "alice")
    with pytest.raises(ClientAuthError, match="not signed by the client CA"):
        ClientVerifier((ours / "ca.pem").read_bytes(), RevocationList(theirs / "crl.pem"))
    with pytest.raises(ClientAuthError, match="cannot be read"):
        RevocationList(ours / "crl.pem")


def test_admission_is_explicit() -> None:
    static_only = Admission(frozenset({"alice"}))
    assert static_only.admits("alice")
    assert not static_only.admits("mallory")  # signed by the CA, but not listed
    pool = Admission(frozenset({"alice"}), ("student-*", "bob"))
    assert pool.admits("student-17") and pool.admits("bob") and pool.admits("alice")
    assert not pool.admits("Student-17") and not pool.admits("bobby")
    assert Admission(frozenset(), ("*",)).admits("anyone")
