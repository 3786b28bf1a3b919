"""Authentication and admission of a client by its TLS certificate.

Why this exists: aioquic 1.7.2 as a server does not request a client certificate at all
(only a private TLS flag, `tls._request_client_certificate`, makes it send a CertificateRequest),
and even then it checks only the CertificateVerify signature, never the chain against the
configured CA, and accepts a client that sends no certificate. The tunnel draft's security
considerations require the concentrator to authenticate its clients, so the concentrator's
QuicConnection must set that flag (tunnel/protocol/quic_ext.py) and, after HandshakeCompleted, pass
the peer certificate to `ClientVerifier.verify` and close the connection when it raises.

Three questions, in this order:
1. Is the certificate genuine? It chains to the client CA, is valid now and is meant for
   client authentication (`ClientVerifier`).
2. Is it still trusted? Its serial is not on the CA's certificate revocation list, if one is
   configured (`RevocationList`; RFC 5280 §5). The list is re-read when its file changes.
3. Is this client served here? Its name (the certificate's Common Name; scripts/make-certs
   puts it in the SAN too) has a `[[client]]` entry or matches one of the pool's `admit`
   patterns (`Admission`). A CA may sign more names than one concentrator serves.

Any failure is a `ClientAuthError` whose message is for the concentrator's log; the peer only
learns that authentication failed (README "Security"). Whatever a certificate holds — a
subject that does not parse, an odd string type — ends in a ClientAuthError, never in another
exception: the caller refuses the connection on it.

Sans-I/O except `RevocationList.refresh`, which stats and reads its one file when asked.
"""

from __future__ import annotations

import datetime
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError


class ClientAuthError(Exception):
    """The client is not authenticated; the message is one sentence for the log."""


def describe_subject(certificate: x509.Certificate) -> str:
    """The certificate's subject for a log line, whatever bytes it holds: a subject that does
    not decode (e.g. a UTF8String of invalid UTF-8) is shown as its DER in hex rather than
    raising, since this text is built while refusing exactly such certificates."""
    try:
        return certificate.subject.rfc4514_string()
    except Exception:  # any parse failure of attacker-controlled bytes
        try:
            raw = certificate.tbs_certificate_bytes.hex()
        except Exception:
            raw = "?"
        return f"<unparsable subject, certificate TBS {raw[:64]}...>"


class ClientVerifier:
    """Verifies client certificates (chain to `ca_pem`, validity at `now`, extended key usage
    clientAuth, not revoked) and returns the client name."""

    def __init__(self, ca_pem: bytes, revocations: RevocationList | None = None) -> None:
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise ClientAuthError(
                "the client CA file holds no PEM certificate: give the ca.pem made by "
                "scripts/make-certs"
            ) from None
        self._cas = cas
        self._store = Store(cas)
        self.revocations = revocations
        if revocations is not None:
            revocations.check_issuer(cas)

    @property
    def cas(self) -> Sequence[x509.Certificate]:
        return self._cas

    def verify(
        self,
        certificate: x509.Certificate | None,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> str:
        """The client name (certificate CN) if `certificate` is acceptable at `now`; raises
        ClientAuthError, and only that, otherwise."""
        try:
            return self._verify(certificate, chain, now)
        except ClientAuthError:
            raise
        except Exception as exc:  # certificates are attacker-controlled input
            subject = describe_subject(certificate) if certificate is not None else "none"
            raise ClientAuthError(
                f"the client certificate {subject} could not be checked "
                f"({type(exc).__name__}: {exc}): issue a well-formed one from the client CA"
            ) from None

    def verify_resumed(
        self, name: str, serial: int, not_valid_after: datetime.datetime, now: datetime.datetime
    ) -> str:
        """`name` if the certificate it authenticated with when its session ticket was issued
        (serial, expiry) is still acceptable at `now`: not expired, not revoked since (a resumed
        connection presents no certificate, RFC 8446 §2.2). ClientAuthError otherwise."""
        if now > not_valid_after:
            raise ClientAuthError(
                f"the client certificate of {name!r} (serial {serial:#x}) its session ticket was "
                "issued to has expired: issue the client a new certificate"
            )
        if self.revocations is not None and self.revocations.is_serial_revoked(serial):
            raise ClientAuthError(
                f"the client certificate of {name!r} (serial {serial:#x}) its session ticket was "
                f"issued to is revoked by {self.revocations.path}: issue the client a new "
                "certificate"
            )
        return name

    def _verify(
        self,
        certificate: x509.Certificate | None,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> str:
        if certificate is None:
            raise ClientAuthError(
                "the client sent no certificate: configure the client's tls.cert and tls.key"
            )
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verifier.verify(certificate, list(chain))
        except VerificationError as exc:
            raise ClientAuthError(
                f"the client certificate {describe_subject(certificate)!r} is not "
                f"accepted ({exc}): issue it from the concentrator's client CA"
            ) from None
        if self.revocations is not None and self.revocations.is_revoked(certificate):
            raise ClientAuthError(
                f"the client certificate {describe_subject(certificate)!r} (serial "
                f"{certificate.serial_number:#x}) is revoked by {self.revocations.path}: "
                "issue the client a new certificate"
            )
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or not isinstance(names[0].value, str) or not names[0].value:
            raise ClientAuthError(
                "the client certificate has no Common Name: issue one whose CN is the client name"
            )
        return names[0].value


# -- revocation (RFC 5280 §5) -----------------------------------------------------------------

Stat = Callable[[Path], tuple[int, int] | None]
"""(mtime_ns, size) of a file, None if it cannot be read."""


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


class RevocationList:
    """The client CA's CRL from one file (PEM or DER), re-read when the file changes.

    `refresh()` is cheap (one stat) and is called before each authentication and on SIGHUP.
    A CRL that does not load, or is not signed by the client CA, is refused at start (a
    ClientAuthError for the configuration error); later, a broken replacement keeps the last
    good list in force and `refresh` returns the reason for the log — failing open would
    readmit every revoked client, failing closed would lock every client out over a typo.
    """

    def __init__(self, path: Path, stat: Stat = _stat) -> None:
        self.path = path
        self._stat = stat
        self._seen: tuple[int, int] | None = None
        self._crl: x509.CertificateRevocationList | None = None
        self._issuers: Sequence[x509.Certificate] = ()
        self.reloads = 0
        problem = self.refresh(force=True)
        if problem is not None:
            raise ClientAuthError(problem)

    @property
    def revoked_serials(self) -> frozenset[int]:
        crl = self._crl
        return frozenset() if crl is None else frozenset(r.serial_number for r in crl)

    @property
    def next_update(self) -> datetime.datetime | None:
        return None if self._crl is None else self._crl.next_update_utc

    def check_issuer(self, cas: Iterable[x509.Certificate]) -> None:
        """Require the CRL to be signed by one of `cas` (the client CA); remembered for reloads."""
        self._issuers = list(cas)
        problem = self._signature_problem(self._crl)
        if problem is not None:
            raise ClientAuthError(problem)

    def refresh(self, *, force: bool = False) -> str | None:
        """Re-read the file if it changed; None, or why the new content was not taken."""
        seen = self._stat(self.path)
        if seen is None:
            if self._crl is None:
                return f"tls.crl {self.path} cannot be read: give the CRL file of the client CA"
            return f"tls.crl {self.path} cannot be read: keeping the list loaded before"
        if seen == self._seen and not force:
            return None
        self._seen = seen
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return f"tls.crl {self.path} cannot be read ({exc.strerror}): keeping the list before"
        try:
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_crl(data)
            )
        except ValueError:
            return (
                f"tls.crl {self.path} is not a PEM or DER certificate revocation list: "
                "write it with scripts/make-certs --revoke"
            )
        problem = self._signature_problem(crl)
        if problem is not None:
            return problem
        self._crl = crl
        self.reloads += 1
        return None

    def _signature_problem(self, crl: x509.CertificateRevocationList | None) -> str | None:
        if crl is None or not self._issuers:
            return None
        for ca in self._issuers:
            if ca.subject == crl.issuer:
                try:
                    if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                        return None
                except (TypeError, ValueError):
                    continue
        return (
            f"tls.crl {self.path} is not signed by the client CA (tls.ca): give the CRL that "
            "CA issued"
        )

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        return self.is_serial_revoked(certificate.serial_number)

    def is_serial_revoked(self, serial: int) -> bool:
        crl = self._crl
        if crl is None:
            return False
        return crl.get_revoked_certificate_by_serial_number(serial) is not None


# -- admission ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """Which authenticated client names this concentrator serves: every `[[client]]` name, and
    the names matching one of the pool's `admit` patterns (shell-style: `*`, `?`, `[...]`,
    matched case-sensitively). Without a pool, or with an empty `admit`, only static clients:
    a certificate the CA signed is not enough by itself (README "Security")."""

    static_names: frozenset[str]
    pool_patterns: tuple[str, ...] = ()

    def admits(self, name: str) -> bool:
        if name in self.static_names:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.pool_patterns)


__all__ = [
    "Admission",
    "ClientAuthError",
    "ClientVerifier",
    "RevocationList",
    "describe_subject",
]
