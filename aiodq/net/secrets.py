"""Reading the shared secret of the HMAC handshake from a file or the environment (docs/security.md)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..protocol.handshake import MIN_SECRET_BYTES

__all__ = ["load_secret"]

_log = logging.getLogger("aiodq.secrets")


def load_secret(path: str | Path | None = None, *, env: str = "AIODQ_SECRET") -> bytes | None:
    """Read the shared secret from ``path`` (whole file, surrounding whitespace stripped) or ``env``.

    Returns None when neither is given.  A file that other users can read is accepted with a
    warning in the log (``chmod 600`` it).

    Raises:
        ValueError: if the file cannot be read, the variable is set but empty (which would
            otherwise silently mean no authentication) or the secret is shorter than 16 bytes.
    """
    if path is not None:
        try:
            secret = Path(path).read_bytes().strip()
            mode = Path(path).stat().st_mode
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {path}: {exc.strerror or exc}") from exc
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            _log.warning("the secret file %s can be read by other users: chmod 600 %s", path, path)
    elif env in os.environ:
        secret = os.environ[env].encode().strip()
        if not secret:
            raise ValueError(
                f"${env} is set but empty: unset it to run without authentication, or set a secret"
            )
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        # (Where it came from: a stale $AIODQ_SECRET is the likely cause; a docs review.)
        source = f"the secret file {path}" if path is not None else f"${env}"
        raise ValueError(f"the shared secret must be at least {MIN_SECRET_BYTES} bytes (from {source})")
    return secret
