"""Reading the shared secret of the HMAC handshake from a file or the environment (docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path

from ..protocol.handshake import MIN_SECRET_BYTES

__all__ = ["load_secret"]


def load_secret(path: str | Path | None = None, *, env: str = "AIODQ_SECRET") -> bytes | None:
    """Read the shared secret from ``path`` (whole file, surrounding whitespace stripped) or ``env``.

    Returns None when neither is given.

    Raises:
        ValueError: if the file cannot be read or the secret is shorter than 16 bytes.
    """
    if path is not None:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {path}: {exc.strerror or exc}") from exc
    elif os.environ.get(env):
        secret = os.environ[env].encode().strip()
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the shared secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret
