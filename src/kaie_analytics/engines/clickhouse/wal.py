"""The embedded engine's write-ahead log: a group of batches is acknowledged once its
rows are in a file of their own here, fsynced, and inserted into ClickHouse after,
several groups in one insert (``writer``).

Why: an insert into ClickHouse writes a part per table it touches (the events and
what four views derive from them), about 30 ms of fixed work whatever its size, so a
client sending batches one after another waited for that on every batch. A file
written and fsynced costs a few milliseconds, and the inserts behind it grow with
the load.

Each group is one Arrow IPC file named by its ``ingested_at`` (µs), written under a
temporary name and renamed once fsynced, so a file with its final name is whole.
A file is removed once its rows are in ClickHouse; at start, the files left (a
crash, or a stop whose last insert failed) are inserted again before anything is
read. Inserting a file whose rows are there already changes nothing: the copies
have the same key and ``ingested_at`` (``events`` keeps one; what views keep of them
is the same again).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

_SUFFIX = ".arrow"


class WriteAheadLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        for partial in path.glob("*.tmp"):  # cut off before it was whole: never acknowledged
            partial.unlink()

    def write(self, ingested_us: int, rows: pa.Table) -> Path:
        """Keep ``rows`` (fsynced before this returns)."""
        final = self.path / f"{ingested_us:020d}{_SUFFIX}"
        partial = final.with_name(final.name + ".tmp")
        with partial.open("wb") as f:
            with pa.ipc.new_stream(f, rows.schema) as writer:
                writer.write_table(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
        self._sync_directory()
        return final

    def files(self) -> list[Path]:
        """The files kept, oldest first."""
        return sorted(self.path.glob(f"*{_SUFFIX}"))

    @staticmethod
    def read(file: Path) -> pa.Table:
        with pa.ipc.open_stream(pa.memory_map(str(file))) as reader:
            return reader.read_all()

    def remove(self, files: Iterable[Path]) -> None:
        """Forget files whose rows are in ClickHouse (one found again is only inserted
        again, so the directory need not be synced)."""
        for file in files:
            file.unlink(missing_ok=True)

    def _sync_directory(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
