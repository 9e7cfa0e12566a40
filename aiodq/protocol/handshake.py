"""Shared-secret authentication: challenge and response with HMAC-SHA256 (wire-format.md 7.12-7.14).

After the worker's HELLO, a master that holds a secret sends AUTH_CHALLENGE with
a fresh 32-byte nonce; the worker answers AUTH_RESPONSE with its own nonce and
``HMAC(secret, "aiodq-v1 worker" || master nonce || worker nonce)``; the master
checks it and proves itself with AUTH_CONFIRM carrying
``HMAC(secret, "aiodq-v1 master" || master nonce || worker nonce)``.  The secret
never travels, both sides prove they hold it, and fresh nonces on both sides
defeat replay.  Without TLS the session after the handshake is not protected
(docs/security.md).  Reading the secret from a file or the environment is the
shell's business (:mod:`aiodq.net.secrets`).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["MAC_SIZE", "MIN_SECRET_BYTES", "NONCE_SIZE", "master_mac", "verify", "worker_mac"]

#: Bytes of a nonce.
NONCE_SIZE = 32
#: Bytes of an HMAC-SHA256 tag.
MAC_SIZE = 32
#: Shortest secret accepted, in bytes.
MIN_SECRET_BYTES = 16

_WORKER_LABEL = b"aiodq-v1 worker"
_MASTER_LABEL = b"aiodq-v1 master"


def _mac(secret: bytes, label: bytes, master_nonce: bytes, worker_nonce: bytes) -> bytes:
    return hmac.new(secret, label + master_nonce + worker_nonce, hashlib.sha256).digest()


def worker_mac(secret: bytes, master_nonce: bytes, worker_nonce: bytes) -> bytes:
    """The worker's proof: ``HMAC-SHA256(secret, "aiodq-v1 worker" || master nonce || worker nonce)``."""
    return _mac(secret, _WORKER_LABEL, master_nonce, worker_nonce)


def master_mac(secret: bytes, master_nonce: bytes, worker_nonce: bytes) -> bytes:
    """The master's proof: ``HMAC-SHA256(secret, "aiodq-v1 master" || master nonce || worker nonce)``."""
    return _mac(secret, _MASTER_LABEL, master_nonce, worker_nonce)


def verify(expected: bytes, received: bytes) -> bool:
    """Compare two tags in constant time."""
    return hmac.compare_digest(expected, received)
