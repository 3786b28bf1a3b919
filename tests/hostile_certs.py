"""Certificates an attacker would present, for the unit and the root tests."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def unparsable_subject_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed, CN a UTF8String holding the bytes ff fe fd fc (not UTF-8), and its key.
    Built with a placeholder CN of the same length, then patched in the DER: its own signature
    breaks, which is no obstacle, since TLS only checks CertificateVerify (issue 10 item 1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AAAA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    placeholder = b"\x0c\x04AAAA"  # UTF8String, length 4: in the issuer and the subject
    assert der.count(placeholder) == 2
    patched = der.replace(placeholder, b"\x0c\x04\xff\xfe\xfd\xfc")
    return x509.load_der_x509_certificate(patched), key


def write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, stem: Path) -> None:
    """`stem`.pem and `stem`.key, as aioquic's load_cert_chain reads them."""
    stem.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    stem.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
