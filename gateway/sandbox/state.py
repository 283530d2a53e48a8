"""Where the sandbox keeps its ledgers between runs (docs/sandbox.md, "Its state"): a folder of its own, given as
``state_dir`` (``cbec serve``: ``<data_dir>/sandbox``, and so ``cbec sandbox --data-dir D`` and ``python -m
gateway.sandbox --data-dir D``: ``D/sandbox``). Without one it keeps them in memory only, as the pytest fixture does.

The sandbox stands in for customs, so it keeps nothing in the gateway's database: what customs holds is its own.
Two files, both JSON:

* ``state.json`` — every table at one moment, written whole to a temporary file that then replaces it
  (``os.replace``: a reader or a crash sees the old file or the new one, never half of one);
* ``journal.jsonl`` — the changes since, one line per accepted message (``[[table, key, value], ...]``, value
  ``null`` for a key removed), appended and flushed as the sandbox takes the message: a table written whole after
  every message would cost the sandbox its throughput once it holds many parcels. A line a crash cut short is the
  last one, and is left out when read.

Read at start: the snapshot, then the journal over it; then written again as one snapshot and an empty journal, as
also when the journal has grown past the snapshot's size and when the sandbox stops. The folder is locked while a
sandbox uses it (``flock``): a second one on the same folder is refused rather than left to mix two ledgers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from gateway.documents import Document
from gateway.messages import BY_CODE

log = logging.getLogger("cbec.sandbox")

SNAPSHOT = "state.json"
JOURNAL = "journal.jsonl"
LOCK = "lock"
#: the journal is folded into the snapshot once it is larger than this, or than the snapshot, whichever is more
MIN_JOURNAL_BYTES = 4 * 1024 * 1024
VERSION = 1

K = TypeVar("K")
V = TypeVar("V")


class StateUnusable(RuntimeError):
    """The state folder cannot be used: held by another sandbox, or not a state this sandbox can read."""


class StateInUse(StateUnusable):
    """Another sandbox keeps its state in this folder."""


class Table(dict[K, V]):
    """A ledger table: a dict that notes which of its keys changed (set, removed, or :meth:`touch`-ed after a change
    of the value in place) while the sandbox keeps its state in a folder; a plain dict otherwise."""

    __slots__ = ("_changed", "name")

    def __init__(self, name: str, changed: set[tuple[str, Any]] | None) -> None:
        super().__init__()
        self.name = name
        self._changed = changed

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        if self._changed is not None:
            self._changed.add((self.name, key))

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        if self._changed is not None:
            self._changed.add((self.name, key))

    def pop(self, key: K, *default: Any) -> Any:
        if self._changed is not None and key in self:
            self._changed.add((self.name, key))
        return super().pop(key, *default)

    def touch(self, key: K) -> None:
        """The value of ``key`` was changed in place: save it again."""
        if self._changed is not None:
            self._changed.add((self.name, key))

    def load(self, items: Iterable[tuple[K, V]]) -> None:
        """Fill the table as read from the folder (nothing to save again)."""
        for key, value in items:
            dict.__setitem__(self, key, value)


# --- values as JSON -------------------------------------------------------------------------------------


def key_json(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


def key_of(raw: Any) -> Any:
    return tuple(raw) if isinstance(raw, list) else raw


def document_json(doc: Document) -> dict[str, Any]:
    return {"type": doc.type.code, "index": doc.index, "path": doc.path, "head": doc.head, "lines": doc.lines}


def document_of(raw: Mapping[str, Any]) -> Document:
    return Document(BY_CODE[raw["type"]], int(raw["index"]), raw["path"], dict(raw["head"]),
                    [dict(line) for line in raw["lines"]])  # fmt: skip


def optional_document_json(doc: Document | None) -> dict[str, Any] | None:
    return None if doc is None else document_json(doc)


def optional_document_of(raw: Mapping[str, Any] | None) -> Document | None:
    return None if raw is None else document_of(raw)


def time_json(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def time_of(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw)


def decimal_of(raw: str) -> Decimal:
    return Decimal(raw)


# --- the folder -----------------------------------------------------------------------------------------


class StateFolder:
    """The snapshot and journal of one sandbox's ledgers (module docstring)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock: IO[bytes] | None = open(self.folder / LOCK, "ab")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise StateInUse(f"another sandbox keeps its state in {self.folder}") from None
        self._journal: IO[bytes] | None = None
        self._snapshot_bytes = 0
        self._journal_bytes = 0

    def read(self) -> Iterator[tuple[str, Any, Any]]:
        """Every (table, key, value) held: the snapshot's, then the journal's changes (value None: removed)."""
        path = self.folder / SNAPSHOT
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise StateUnusable(f"{path} is no JSON: {exc}") from None
            if not isinstance(data, dict) or data.get("version") != VERSION:
                version = data.get("version") if isinstance(data, dict) else None
                raise StateUnusable(f"{path}: state version {version!r}, this sandbox reads {VERSION}")
            for table, items in data["tables"].items():
                for key, value in items:
                    yield table, key_of(key), value
        path = self.folder / JOURNAL
        if path.exists():
            lines = path.read_bytes().split(b"\n")
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    changes = orjson.loads(line)
                except orjson.JSONDecodeError:
                    if any(rest.strip() for rest in lines[n + 1 :]):
                        raise StateUnusable(f"{path}: line {n + 1} is no JSON") from None
                    log.warning("sandbox state: the last line of %s was cut short (a crash); left out", path)
                    break
                for table, key, value in changes:
                    yield table, key_of(key), value

    def write(self, tables: Mapping[str, Iterable[tuple[Any, Any]]]) -> None:
        """Replace the snapshot by ``tables`` ({table: (key, value JSON)...}) and empty the journal."""
        body = orjson.dumps({"version": VERSION, "tables": {name: [[key_json(k), v] for k, v in items]
                                                             for name, items in tables.items()}})  # fmt: skip
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.folder / SNAPSHOT)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._journal is not None:
            self._journal.close()
        # the snapshot holds the journal's changes now: a new, empty one
        self._journal = open(self.folder / JOURNAL, "wb")  # noqa: SIM115 - kept open, appended to
        self._snapshot_bytes, self._journal_bytes = len(body), 0

    def append(self, changes: list[tuple[str, Any, Any]]) -> None:
        """One journal line of changes (table, key, value JSON or None), flushed to the file."""
        if self._journal is None:
            self._journal = open(self.folder / JOURNAL, "ab")  # noqa: SIM115 - kept open, appended to
        line = orjson.dumps([[table, key_json(key), value] for table, key, value in changes]) + b"\n"
        self._journal.write(line)
        self._journal.flush()
        self._journal_bytes += len(line)

    @property
    def journal_full(self) -> bool:
        return self._journal_bytes > max(MIN_JOURNAL_BYTES, self._snapshot_bytes)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None
