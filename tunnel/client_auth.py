"""Verification of a client's TLS certificate against the concentrator's client CA.

Why this exists: aioquic 1.7.2 as a server does not request a client certificate at all
(only a private TLS flag, `tls._request_client_certificate`, makes it send a CertificateRequest),
and even then it checks only the CertificateVerify signature, never the chain against the
configured CA, and accepts a client that sends no certificate. The tunnel draft's security
considerations require the concentrator to authenticate its clients, so the concentrator's
QuicConnection must set that flag (tunnel/quic_ext.py) and, after HandshakeCompleted, pass the
peer certificate to `ClientVerifier.verify` and close the connection when it raises.

The client's name is its certificate's Common Name (scripts/make-certs puts it in the SAN too).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError


class ClientAuthError(Exception):
    """The client is not authenticated; the message is one sentence for the log and the close
    reason."""


class ClientVerifier:
    """Verifies client certificates (chain to `ca_pem`, validity at `now`, extended key usage
    clientAuth) and returns the client name."""

    def __init__(self, ca_pem: bytes) -> None:
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise ClientAuthError(
                "the client CA file holds no PEM certificate: give the ca.pem made by "
                "scripts/make-certs"
            ) from None
        self._store = Store(cas)

    def verify(
        self,
        certificate: x509.Certificate | None,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> str:
        """The client name (certificate CN) if `certificate` is acceptable at `now`."""
        if certificate is None:
            raise ClientAuthError(
                "the client sent no certificate: configure the client's tls.cert and tls.key"
            )
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verifier.verify(certificate, list(chain))
        except VerificationError as exc:
            raise ClientAuthError(
                f"the client certificate {certificate.subject.rfc4514_string()!r} is not "
                f"accepted ({exc}): issue it from the concentrator's client CA"
            ) from None
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or not isinstance(names[0].value, str) or not names[0].value:
            raise ClientAuthError(
                "the client certificate has no Common Name: issue one whose CN is the client name"
            )
        return names[0].value
