"""TLS contexts for the master and the workers, from certificate files (docs/security.md).

Both use the standard library's defaults (TLS 1.2 or later, certificate and
host-name checks on the client).  Mutual TLS: give the master a CA to check
client certificates against, and each worker a certificate and key.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TypeVar

__all__ = ["client_context", "server_context"]

_T = TypeVar("_T")


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """The master's context: its certificate chain and key.

    With ``client_ca``, clients must present a certificate signed by it (mutual TLS).

    Raises:
        ValueError: if a file cannot be read or does not hold what it should.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(lambda: context.load_cert_chain(cert, key), certificate=cert, key=key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        _load(lambda: context.load_verify_locations(client_ca), **{"client CA": client_ca})
    return context


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A worker's context: trust ``ca`` (default: the system's CAs); present ``cert``/``key`` for mutual TLS.

    Raises:
        ValueError: if a file cannot be read or does not hold what it should.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and the key its certificate")
    context = _load(lambda: ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca), CA=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        _load(lambda: context.load_cert_chain(cert, key), certificate=cert, key=key)
    return context


def _load(step: Callable[[], _T], **files: str | None) -> _T:
    """``step()``, which reads ``files``; a file that cannot be read or used is a ValueError naming it."""
    named = {role: path for role, path in files.items() if path is not None}
    for role, path in named.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read the TLS {role} {path}: {exc.strerror or exc}") from exc
    try:
        return step()
    except (OSError, ssl.SSLError) as exc:
        which = " and ".join(f"{role} {path}" for role, path in named.items())
        raise ValueError(f"cannot load the TLS {which}: {exc}") from exc
