"""TLS contexts for the master and the workers, from certificate files (docs/security.md).

Both use the standard library's defaults (TLS 1.2 or later, certificate and
host-name checks on the client).  Mutual TLS: give the master a CA to check
client certificates against, and each worker a certificate and key.
"""

from __future__ import annotations

import ssl

__all__ = ["client_context", "server_context"]


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """The master's context: its certificate chain and key.

    With ``client_ca``, clients must present a certificate signed by it (mutual TLS).

    Raises:
        ValueError: if a file cannot be read or does not hold what it should.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS files: {exc}") from exc
    return context


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A worker's context: trust ``ca`` (default: the system's CAs); present ``cert``/``key`` for mutual TLS.

    Raises:
        ValueError: if a file cannot be read or does not hold what it should.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and the key its certificate")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS files: {exc}") from exc
    return context
