"""Signed, expiring download links (HMAC-SHA256 over kind, id, tenant, key and expiry).

A link names the API key it was made for: it stops working once that key is
revoked, as a presigned link stops working with its signing credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """``KAIE_SECRET_KEY``, else a key generated once and kept in the data directory."""
    if configured:
        return configured.encode()
    path = data_dir / "secret.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def sign(secret: bytes, kind: str, job_id: str, tenant: str, key: str, expires: int) -> str:
    msg = f"{kind}\x00{job_id}\x00{tenant}\x00{key}\x00{expires}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def verify(
    secret: bytes, kind: str, job_id: str, tenant: str, key: str, expires: int, sig: str
) -> bool:
    expected = sign(secret, kind, job_id, tenant, key, expires)
    return sig.isascii() and hmac.compare_digest(expected, sig)
