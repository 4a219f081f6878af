"""In-memory index of recently ingested event ids, for idempotent ingestion.

Each id is kept as a 64-bit hash of ``tenant NUL id``: a sorted NumPy array
for what was loaded or folded in, plus a set for what arrived since. A hash hit
is only a candidate: the store confirms it against the stored ids before it
calls an event a duplicate, so a hash collision can never drop an event.
"""

from __future__ import annotations

import hashlib

import numpy as np

FOLD_AT = 500_000


def id_hash(tenant: str, event_id: str) -> int:
    digest = hashlib.blake2b(f"{tenant}\x00{event_id}".encode(), digest_size=8).digest()
    # Stored in a signed BIGINT column; keep the value in int64 range.
    return int.from_bytes(digest, "little", signed=True)


class IdIndex:
    def __init__(self, hashes: np.ndarray | None = None) -> None:
        self._base = (
            np.unique(hashes.astype(np.int64)) if hashes is not None else np.empty(0, np.int64)
        )
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return int(self._base.size) + len(self._recent)

    def candidates(self, hashes: list[int]) -> list[bool]:
        """For each hash: may it be stored already?"""
        if not hashes:
            return []
        found = [False] * len(hashes)
        if self._base.size:
            arr = np.asarray(hashes, dtype=np.int64)
            pos = np.searchsorted(self._base, arr)
            pos[pos >= self._base.size] = 0
            found = (self._base[pos] == arr).tolist()
        recent = self._recent
        return [f or h in recent for f, h in zip(found, hashes, strict=True)]

    def add(self, hashes: list[int]) -> None:
        self._recent.update(hashes)
        if len(self._recent) >= FOLD_AT:
            folded = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
            self._base = np.union1d(self._base, folded)
            self._recent.clear()
