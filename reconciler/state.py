"""The state database (SQLite in the state directory).

Per destination, tag and platform (one row per tag link, so two watchlist
entries that share a source never share or remove each other's rows): the
digest last seen, the digest published, the last success, the last failure
with its reason, and when it is next due. Per image directory, the entry
(dest) that last published it and since when no tag references it. It never
holds a secret: only digests, names and error messages (which never carry
secrets).

Per entry (its dest), while the entry as a whole fails (its tags cannot be
listed, or its whole cycle failed): how many times in a row, the last reason,
and when it is due again. The service schedules retries from these `next_due`
times alone, so a backoff survives a restart.

Per tag link, once a signature policy applied: the fingerprint of the key
that signed the published image and where that signature was found (NULL:
published without a policy).

Per source repository (`host/name`), what the last anonymous probe said:
public, not public (and why) or unknown, and when it was asked.

Per publish target (each has its own database), the delivery times of the
recently published images (reconciler/delivery.py): pushed, seen, published
and when each stratum 1 first served them, and the webhook push times not yet
told to a publish, so that a restart neither loses a delivery still waiting
for a stratum 1 nor tells (and observes) one twice.

Version 1 keyed tags by source; versions up to 4 had no signature columns,
up to 5 no delivery tables; opening such a database migrates it.
`StateDB.read_only()` opens it for `--dry-run` without writing anything.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

from .delivery import Delivery, PushKey

# 3: entry_state (entries failing as a whole); 4: visibility_state; 5: tag_state.signed_by, signed_where;
# 6: delivery_state, push_state (created by _SCHEMA when an older database is opened)
SCHEMA_VERSION = 6
_TAG_COLUMNS = """
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
    next_due REAL"""
# Added in version 5: who signed the published image, and where the signature was.
_SIGNATURE_COLUMNS = ("signed_by", "signed_where")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tag_state ({_TAG_COLUMNS},
    signed_by TEXT,
    signed_where TEXT,
    PRIMARY KEY (dest, tag, platform)
);
CREATE TABLE IF NOT EXISTS entry_state (
    dest TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failure REAL NOT NULL,
    failure_reason TEXT NOT NULL,
    next_due REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS visibility_state (
    repository TEXT PRIMARY KEY,
    public INTEGER,
    reason TEXT NOT NULL,
    checked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_state (
    digest TEXT PRIMARY KEY,
    dest TEXT,
    unreferenced_since REAL
);
CREATE TABLE IF NOT EXISTS delivery_state (
    tag_path TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    digest TEXT NOT NULL,
    pushed REAL,
    seen REAL NOT NULL,
    published REAL NOT NULL,
    revision INTEGER,
    replicas TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS push_state (
    dest TEXT NOT NULL,
    tag TEXT NOT NULL,
    pushed_at REAL NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (dest, tag)
);
"""
# delivery_state.replicas: JSON [[stratum 1 URL, first served or null], …];
# push_state.tag: "" when the hook named no tag (NULL would not be unique in the key).
# Version 1: tags keyed by (source, tag, platform), images owned by a source (now: by
# the dest of a tag of that source; sources were one entry each in practice).
_V1_TAG_COLUMNS = ", ".join(line.split()[0] for line in _TAG_COLUMNS.strip().splitlines())
_MIGRATE_FROM_1 = f"""
INSERT OR REPLACE INTO tag_state ({_V1_TAG_COLUMNS}) SELECT * FROM tags;
INSERT OR REPLACE INTO image_state (digest, dest, unreferenced_since)
    SELECT i.digest, (SELECT t.dest FROM tags t WHERE t.source = i.source ORDER BY t.dest LIMIT 1),
           i.unreferenced_since FROM images i;
DROP TABLE tags;
DROP TABLE images;
DROP TABLE IF EXISTS blobs;
"""



@dataclass(frozen=True)
class TagKey:
    """One tag link: an entry's (dest, tag, platform), with the source it comes
    from and the link's path under the publish root."""

    dest: str
    tag: str
    platform: str
    source: str
    tag_path: str


@dataclass(frozen=True)
class TagState:
    """What we know of one (dest, tag, platform)."""

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
    signed_by: Optional[str] = None  # the signing key's SHA-256 SPKI fingerprint; None: no policy applied
    signed_where: Optional[str] = None  # where that signature was found




@dataclass(frozen=True)
class EntryFailure:
    """An entry failing as a whole, `failures` times in a row."""

    dest: str
    source: str
    failures: int
    last_failure: float
    failure_reason: str
    next_due: float


_ENTRY_COLUMNS = ", ".join(f.name for f in fields(EntryFailure))


@dataclass(frozen=True)
class RepositoryVisibility:
    """What the last anonymous probe of a source repository said: `public` is
    None when it could not tell; `reason` says why not public (or unknown)."""

    repository: str
    public: Optional[bool]
    reason: str
    checked_at: float


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _tag_columns(conn: sqlite3.Connection) -> List[str]:
    return [row[1] for row in conn.execute("PRAGMA table_info(tag_state)")]


def _migrate_to_5(conn: sqlite3.Connection) -> None:
    """Add the signature columns to the tag_state of an older version."""
    missing = [c for c in _SIGNATURE_COLUMNS if c not in _tag_columns(conn)]
    if missing:
        conn.executescript("BEGIN;" + "".join(f"ALTER TABLE tag_state ADD COLUMN {c} TEXT;" for c in missing)
                           + "COMMIT;")


class StateDB:
    """Thread-safe access to the state database."""

    def __init__(self, path: Path, *, _conn: Optional[sqlite3.Connection] = None) -> None:
        self.path = path
        self._lock = threading.RLock()  # re-entrant: batch() holds it around the writes it groups
        if _conn is not None:
            self._conn = _conn
            self._select = self._tag_select()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        _migrate_to_5(self._conn)
        if _has_table(self._conn, "tags"):
            self._conn.executescript("BEGIN;" + _MIGRATE_FROM_1 + "COMMIT;")
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._select = self._tag_select()

    def _tag_select(self) -> str:
        """The columns TagState(*row) takes; NULL for those an older database
        opened read-only (never migrated) lacks."""
        present = set(_tag_columns(self._conn))
        return ", ".join(f.name if f.name in present else f"NULL AS {f.name}" for f in fields(TagState))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes made inside into one SQLite transaction (a cycle
        records a thousand tags in one commit, not a thousand)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @classmethod
    def read_only(cls, path: Path) -> "StateDB":
        """The database at `path` for reading only, writing nothing to disk (not
        even SQLite's -wal/-shm files when no writer has it open); an empty one
        in memory when there is none or it is of an older version. Writes raise."""
        if path.is_file():
            live_writer = Path(f"{path}-wal").exists()
            # immutable=1 creates no -shm file; with a writer at work, mode=ro reads its WAL too.
            uri = f"{path.resolve().as_uri()}?{'mode=ro' if live_writer else 'immutable=1'}"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            if _has_table(conn, "tag_state"):
                return cls(path, _conn=conn)
            conn.close()
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        conn.executescript(_SCHEMA)
        return cls(path, _conn=conn)

    def close(self) -> None:
        self._conn.close()

    def get(self, dest: str, tag: str, platform: str) -> Optional[TagState]:
        """The row of one tag link (an entry's dest, a tag, a platform)."""
        with self._lock:
            row = self._conn.execute(f"SELECT {self._select} FROM tag_state WHERE dest=? AND tag=? AND platform=?",
                                     (dest, tag, platform)).fetchone()
        return TagState(*row) if row else None

    def all(self) -> List[TagState]:
        """Every row, ordered by dest, tag and platform."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {self._select} FROM tag_state ORDER BY dest, tag, platform").fetchall()
        return [TagState(*r) for r in rows]

    def record_success(self, key: TagKey, seen_digest: str, manifest_digest: str, next_due: Optional[float] = None,
                       now: Optional[float] = None, signature: Optional[Tuple[Optional[str], Optional[str]]] = None
                       ) -> None:
        """The tag is published at `manifest_digest`. `signature`: (signed_by,
        signed_where) of an image just published, (None, None) without a
        policy; None keeps what the row holds (an unchanged tag)."""
        now = time.time() if now is None else now
        signed_by, signed_where = signature or (None, None)
        with self._lock:
            self._conn.execute(
                """INSERT INTO tag_state (source, tag, platform, dest, tag_path, seen_digest, manifest_digest,
                                          published_digest, last_success, failures, next_due, signed_by, signed_where)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
                   ON CONFLICT (dest, tag, platform) DO UPDATE SET
                     source=excluded.source, tag_path=excluded.tag_path, seen_digest=excluded.seen_digest,
                     manifest_digest=excluded.manifest_digest, published_digest=excluded.published_digest,
                     last_success=excluded.last_success, failures=0, next_due=excluded.next_due,
                     signed_by=CASE WHEN ? THEN excluded.signed_by ELSE tag_state.signed_by END,
                     signed_where=CASE WHEN ? THEN excluded.signed_where ELSE tag_state.signed_where END""",
                (key.source, key.tag, key.platform, key.dest, key.tag_path, seen_digest, manifest_digest,
                 manifest_digest, now, next_due, signed_by, signed_where, signature is not None,
                 signature is not None))

    def record_failure(self, key: TagKey, reason: str, next_due: Optional[float] = None,
                       now: Optional[float] = None) -> int:
        """A failed attempt; returns how many failures in a row."""
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute(
                """INSERT INTO tag_state (source, tag, platform, dest, tag_path, last_failure, failure_reason,
                                          failures, next_due)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (dest, tag, platform) DO UPDATE SET
                     source=excluded.source, tag_path=excluded.tag_path, last_failure=excluded.last_failure,
                     failure_reason=excluded.failure_reason, failures=tag_state.failures + 1,
                     next_due=excluded.next_due""",
                (key.source, key.tag, key.platform, key.dest, key.tag_path, now, reason[:2000], next_due))
            row = self._conn.execute("SELECT failures FROM tag_state WHERE dest=? AND tag=? AND platform=?",
                                     (key.dest, key.tag, key.platform)).fetchone()
        return int(row[0])

    def forget(self, dest: str, tag: str, platform: str) -> None:
        """Drop a tag link that is no longer watched or no longer exists."""
        with self._lock:
            self._conn.execute("DELETE FROM tag_state WHERE dest=? AND tag=? AND platform=?", (dest, tag, platform))

    def entry_failure(self, dest: str) -> Optional[EntryFailure]:
        """The failure of the entry publishing to `dest`, while it fails as a whole."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entry_state WHERE dest=?", (dest,)).fetchone()
        return EntryFailure(*row) if row else None

    def entry_failures(self) -> Dict[str, EntryFailure]:
        """Every entry failing as a whole, by dest."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entry_state").fetchall()
        return {row[0]: EntryFailure(*row) for row in rows}

    def record_entry_failure(self, dest: str, source: str, reason: str, next_due: float, now: float) -> None:
        """The entry failed as a whole once more (`next_due` computed by the caller's backoff)."""
        with self._lock:
            self._conn.execute(
                """INSERT INTO entry_state (dest, source, failures, last_failure, failure_reason, next_due)
                   VALUES (?, ?, 1, ?, ?, ?)
                   ON CONFLICT (dest) DO UPDATE SET source=excluded.source, failures=entry_state.failures + 1,
                     last_failure=excluded.last_failure, failure_reason=excluded.failure_reason,
                     next_due=excluded.next_due""", (dest, source, now, reason[:2000], next_due))

    def clear_entry_failure(self, dest: str) -> None:
        """The entry's tags were listed (or it has exact tags): it no longer fails as a whole."""
        with self._lock:
            self._conn.execute("DELETE FROM entry_state WHERE dest=?", (dest,))

    def forget_entry_failures_except(self, dests: Set[str]) -> None:
        """Drop the failures of entries no longer in the watchlist: a later entry
        with the same dest starts afresh (no inherited error, no delayed poll)."""
        with self._lock:
            for (dest,) in self._conn.execute("SELECT dest FROM entry_state").fetchall():
                if dest not in dests:
                    self._conn.execute("DELETE FROM entry_state WHERE dest=?", (dest,))

    def retry_due(self) -> Dict[str, float]:
        """Per dest with anything failing, when it is due again: what the
        scheduler waits for. An entry failing as a whole has its own time (its
        tags' rows were not tried, so their times are stale); otherwise the
        earliest of its failing tags'."""
        with self._lock:
            rows = self._conn.execute(
                """SELECT dest, next_due FROM entry_state
                   UNION ALL
                   SELECT dest, MIN(next_due) FROM tag_state
                   WHERE failures > 0 AND next_due IS NOT NULL AND dest NOT IN (SELECT dest FROM entry_state)
                   GROUP BY dest""").fetchall()
        return {dest: float(due) for dest, due in rows}

    def record_visibility(self, seen: RepositoryVisibility) -> None:
        """Keep the answer of an anonymous probe of a source repository."""
        public = None if seen.public is None else int(seen.public)
        with self._lock:
            self._conn.execute(
                """INSERT INTO visibility_state (repository, public, reason, checked_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (repository) DO UPDATE SET public=excluded.public, reason=excluded.reason,
                     checked_at=excluded.checked_at""", (seen.repository, public, seen.reason[:2000], seen.checked_at))

    def visibilities(self) -> Dict[str, RepositoryVisibility]:
        """The last probe's answer per source repository (none in a database of
        version 3 or older, opened read-only beside a service not yet upgraded)."""
        with self._lock:
            if not _has_table(self._conn, "visibility_state"):
                return {}
            rows = self._conn.execute("SELECT repository, public, reason, checked_at FROM visibility_state").fetchall()
        return {r[0]: RepositoryVisibility(r[0], None if r[1] is None else bool(r[1]), r[2], float(r[3]))
                for r in rows}

    def mark_images(self, on_disk: Dict[str, Optional[str]], referenced: Set[str], now: float) -> None:
        """Record which published image directories no tag references, and since when.
        `on_disk` maps each image digest to the dest that last published it (if known)."""
        with self._lock:
            known = {d: since for d, since in self._conn.execute("SELECT digest, unreferenced_since FROM image_state")}
            for digest, dest in on_disk.items():
                since = None if digest in referenced else (known.get(digest) or now)
                self._conn.execute(
                    """INSERT INTO image_state (digest, dest, unreferenced_since) VALUES (?, ?, ?)
                       ON CONFLICT (digest) DO UPDATE SET dest=COALESCE(excluded.dest, image_state.dest),
                         unreferenced_since=excluded.unreferenced_since""", (digest, dest, since))
            for digest in set(known) - set(on_disk):
                self._conn.execute("DELETE FROM image_state WHERE digest=?", (digest,))

    def gc_candidates(self, unreferenced_before: float, protected_dests: Set[str], limit: int) -> List[str]:
        """Images unreferenced since before `unreferenced_before`, oldest first, sparing
        those last published for a dest in `protected_dests`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT digest, dest FROM image_state WHERE unreferenced_since IS NOT NULL AND unreferenced_since <= ? "
                "ORDER BY unreferenced_since", (unreferenced_before,)).fetchall()
        return [d for d, dest in rows if dest not in protected_dests][:limit]

    # -- delivery times (reconciler/delivery.py's DeliveryStore) -----------------

    def deliveries(self) -> List[Delivery]:
        """The deliveries kept, oldest publish first (none in a database of
        version 5 or older, opened read-only)."""
        with self._lock:
            if not _has_table(self._conn, "delivery_state"):
                return []
            rows = self._conn.execute(
                "SELECT tag_path, image, digest, pushed, seen, published, revision, replicas FROM delivery_state "
                "ORDER BY published, tag_path").fetchall()
        return [Delivery(tag_path, image, digest, pushed, seen, published, revision,
                         tuple((str(url), None if at is None else float(at)) for url, at in json.loads(replicas)))
                for tag_path, image, digest, pushed, seen, published, revision, replicas in rows]

    def record_delivery(self, delivery: Delivery) -> None:
        """Keep a delivery (replacing the tag's earlier one)."""
        replicas = json.dumps([[url, at] for url, at in delivery.replicas])
        with self._lock:
            self._conn.execute(
                """INSERT OR REPLACE INTO delivery_state (tag_path, image, digest, pushed, seen, published, revision,
                                                          replicas) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (delivery.tag_path, delivery.image, delivery.digest, delivery.pushed, delivery.seen,
                 delivery.published, delivery.revision, replicas))

    def forget_delivery(self, tag_path: str) -> None:
        """Drop a delivery no longer kept."""
        with self._lock:
            self._conn.execute("DELETE FROM delivery_state WHERE tag_path=?", (tag_path,))

    def pushes(self) -> Dict[PushKey, Tuple[float, float]]:
        """Push times not yet told to a publish: (dest, tag or None) -> (pushed, received)."""
        with self._lock:
            if not _has_table(self._conn, "push_state"):
                return {}
            rows = self._conn.execute("SELECT dest, tag, pushed_at, received FROM push_state").fetchall()
        return {(dest, tag or None): (float(at), float(received)) for dest, tag, at, received in rows}

    def record_push(self, key: PushKey, pushed: float, received: float) -> None:
        """Keep a push time until a publish takes it."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO push_state (dest, tag, pushed_at, received) VALUES (?, ?, ?, ?)",
                               (key[0], key[1] or "", pushed, received))

    def forget_push(self, key: PushKey) -> None:
        """Drop a push time told to a publish (or too old to be)."""
        with self._lock:
            self._conn.execute("DELETE FROM push_state WHERE dest=? AND tag=?", (key[0], key[1] or ""))
