"""The state database (SQLite in the state directory).

Per image, tag and platform: the digest last seen, the digest published,
the last success, the last failure with its reason, and when it is next due.
Also an index of the blobs in the blob store. It never holds a secret: only
digests, names and error messages (which never carry secrets).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    source TEXT NOT NULL,
    tag TEXT NOT NULL,
    platform TEXT NOT NULL,
    dest TEXT NOT NULL,
    tag_path TEXT NOT NULL,
    seen_digest TEXT,
    manifest_digest TEXT,
    published_digest TEXT,
    last_success REAL,
    last_failure REAL,
    failure_reason TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    next_due REAL,
    PRIMARY KEY (source, tag, platform)
);
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,
    source TEXT,
    unreferenced_since REAL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    media_type TEXT,
    first_seen REAL NOT NULL,
    last_used REAL NOT NULL
);
"""


@dataclass(frozen=True)
class TagState:
    """What we know of one (source, tag, platform)."""

    source: str
    tag: str
    platform: str
    dest: str
    tag_path: str
    seen_digest: Optional[str]
    manifest_digest: Optional[str]
    published_digest: Optional[str]
    last_success: Optional[float]
    last_failure: Optional[float]
    failure_reason: Optional[str]
    failures: int
    next_due: Optional[float]


class StateDB:
    """Thread-safe access to the state database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def get(self, source: str, tag: str, platform: str) -> Optional[TagState]:
        with self._lock:
            row = self._conn.execute("SELECT * FROM tags WHERE source=? AND tag=? AND platform=?",
                                     (source, tag, platform)).fetchone()
        return TagState(*row) if row else None

    def all(self) -> List[TagState]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM tags ORDER BY source, tag, platform").fetchall()
        return [TagState(*r) for r in rows]

    def record_success(self, source: str, tag: str, platform: str, dest: str, tag_path: str, seen_digest: str,
                       manifest_digest: str, next_due: Optional[float] = None, now: Optional[float] = None) -> None:
        """The tag is published at `manifest_digest`."""
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute(
                """INSERT INTO tags (source, tag, platform, dest, tag_path, seen_digest, manifest_digest,
                                     published_digest, last_success, failures, next_due)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
                   ON CONFLICT (source, tag, platform) DO UPDATE SET
                     dest=excluded.dest, tag_path=excluded.tag_path, seen_digest=excluded.seen_digest, manifest_digest=excluded.manifest_digest,
                     published_digest=excluded.published_digest, last_success=excluded.last_success,
                     failures=0, next_due=excluded.next_due""",
                (source, tag, platform, dest, tag_path, seen_digest, manifest_digest, manifest_digest, now, next_due))

    def record_failure(self, source: str, tag: str, platform: str, dest: str, tag_path: str, reason: str,
                       next_due: Optional[float] = None, now: Optional[float] = None) -> int:
        """A failed attempt; returns how many failures in a row."""
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute(
                """INSERT INTO tags (source, tag, platform, dest, tag_path, last_failure, failure_reason, failures,
                                     next_due)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (source, tag, platform) DO UPDATE SET
                     dest=excluded.dest, tag_path=excluded.tag_path, last_failure=excluded.last_failure, failure_reason=excluded.failure_reason,
                     failures=tags.failures + 1, next_due=excluded.next_due""",
                (source, tag, platform, dest, tag_path, now, reason[:2000], next_due))
            row = self._conn.execute("SELECT failures FROM tags WHERE source=? AND tag=? AND platform=?",
                                     (source, tag, platform)).fetchone()
        return int(row[0])

    def forget(self, source: str, tag: str, platform: str) -> None:
        """Drop a tag that is no longer watched or no longer exists."""
        with self._lock:
            self._conn.execute("DELETE FROM tags WHERE source=? AND tag=? AND platform=?", (source, tag, platform))

    def mark_images(self, on_disk: Dict[str, Optional[str]], referenced: Set[str], now: float) -> None:
        """Record which published image directories no tag references, and since when.
        `on_disk` maps each image digest to the source that last published it (if known)."""
        with self._lock:
            known = {d: since for d, since in self._conn.execute("SELECT digest, unreferenced_since FROM images")}
            for digest, source in on_disk.items():
                since = None if digest in referenced else (known.get(digest) or now)
                self._conn.execute(
                    """INSERT INTO images (digest, source, unreferenced_since) VALUES (?, ?, ?)
                       ON CONFLICT (digest) DO UPDATE SET source=COALESCE(excluded.source, images.source),
                         unreferenced_since=excluded.unreferenced_since""", (digest, source, since))
            for digest in set(known) - set(on_disk):
                self._conn.execute("DELETE FROM images WHERE digest=?", (digest,))

    def gc_candidates(self, unreferenced_before: float, protected_sources: Set[str], limit: int) -> List[str]:
        """Images unreferenced since before `unreferenced_before`, oldest first, sparing
        those last published for a source in `protected_sources`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT digest, source FROM images WHERE unreferenced_since IS NOT NULL AND unreferenced_since <= ? "
                "ORDER BY unreferenced_since", (unreferenced_before,)).fetchall()
        return [d for d, source in rows if source not in protected_sources][:limit]

    def record_blob(self, digest: str, size: int, media_type: Optional[str], now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute(
                """INSERT INTO blobs (digest, size, media_type, first_seen, last_used) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (digest) DO UPDATE SET last_used=excluded.last_used""",
                (digest, size, media_type, now, now))
