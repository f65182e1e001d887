"""The state database: its v1 -> v2 migration keeps what 0.1 knew."""

from __future__ import annotations

import sqlite3

from reconciler.state import StateDB

# The schema of reconciler 0.1 (state keyed by source), as it shipped.
V1_SCHEMA = """
CREATE TABLE tags (source TEXT NOT NULL, tag TEXT NOT NULL, platform TEXT NOT NULL, dest TEXT NOT NULL,
    tag_path TEXT NOT NULL, seen_digest TEXT, manifest_digest TEXT, published_digest TEXT, last_success REAL,
    last_failure REAL, failure_reason TEXT, failures INTEGER NOT NULL DEFAULT 0, next_due REAL,
    PRIMARY KEY (source, tag, platform));
CREATE TABLE images (digest TEXT PRIMARY KEY, source TEXT, unreferenced_since REAL);
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT, first_seen REAL NOT NULL,
    last_used REAL NOT NULL);
"""


def test_a_v1_database_is_migrated_with_its_rows_and_image_owners(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO tags VALUES ('reg/team/app', 'v1', 'linux/amd64', 'app', 'app:v1', 'sha256:a', "
                 "'sha256:b', 'sha256:b', 100.0, NULL, NULL, 0, 200.0)")
    conn.execute("INSERT INTO images VALUES ('sha256:old', 'reg/team/app', 50.0)")
    conn.execute("INSERT INTO images VALUES ('sha256:orphan', 'reg/gone', 60.0)")
    conn.commit()
    conn.close()
    state = StateDB(path)
    try:
        row = state.get("app", "v1", "linux/amd64")
        assert row is not None and row.published_digest == "sha256:b" and row.next_due == 200.0
        # The image of an entry whose listing fails stays protected: it belongs to that entry's dest.
        assert state.gc_candidates(1000.0, {"app"}, 10) == ["sha256:orphan"]
        assert sorted(state.gc_candidates(1000.0, set(), 10)) == ["sha256:old", "sha256:orphan"]
    finally:
        state.close()
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"tag_state", "image_state", "entry_state", "visibility_state", "delivery_state", "push_state"}


V3_TAG_STATE = """
CREATE TABLE tag_state (source TEXT NOT NULL, tag TEXT NOT NULL, platform TEXT NOT NULL, dest TEXT NOT NULL,
    tag_path TEXT NOT NULL, seen_digest TEXT, manifest_digest TEXT, published_digest TEXT, last_success REAL,
    last_failure REAL, failure_reason TEXT, failures INTEGER NOT NULL DEFAULT 0, next_due REAL,
    PRIMARY KEY (dest, tag, platform));
INSERT INTO tag_state VALUES ('reg/team/app', 'v1', 'linux/amd64', 'app', 'app:v1', 'sha256:a', 'sha256:b',
    'sha256:b', 100.0, NULL, NULL, 0, 200.0);
PRAGMA user_version=3;
"""


def test_a_v3_database_reads_read_only_and_gains_the_signature_columns_when_opened(tmp_path):
    from reconciler.state import TagKey

    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(V3_TAG_STATE)
    conn.close()
    # --dry-run beside a service not yet upgraded: reads, writes nothing, no signer known
    reader = StateDB.read_only(path)
    try:
        (row,) = reader.all()
        assert row.published_digest == "sha256:b" and row.signed_by is None
    finally:
        reader.close()
    state = StateDB(path)
    try:
        key = TagKey("app", "v1", "linux/amd64", "reg/team/app", "app:v1")
        state.record_success(key, "sha256:c", "sha256:d", signature=("f" * 64, "reg/team/app:sha256-c….sig"))
        assert state.get("app", "v1", "linux/amd64").signed_by == "f" * 64
        state.record_success(key, "sha256:c", "sha256:d")  # unchanged: keeps who signed it
        assert state.get("app", "v1", "linux/amd64").signed_where == "reg/team/app:sha256-c….sig"
        state.record_success(key, "sha256:e", "sha256:f", signature=(None, None))  # published without a policy
        assert state.get("app", "v1", "linux/amd64").signed_by is None
    finally:
        state.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 6


def v5_database(path):
    """A state database as version 5 left it: signature columns, no delivery tables."""
    conn = sqlite3.connect(path)
    conn.executescript(V3_TAG_STATE.replace("PRAGMA user_version=3;", """
        ALTER TABLE tag_state ADD COLUMN signed_by TEXT; ALTER TABLE tag_state ADD COLUMN signed_where TEXT;
        CREATE TABLE entry_state (dest TEXT PRIMARY KEY, source TEXT NOT NULL, failures INTEGER NOT NULL,
            last_failure REAL NOT NULL, failure_reason TEXT NOT NULL, next_due REAL NOT NULL);
        CREATE TABLE visibility_state (repository TEXT PRIMARY KEY, public INTEGER, reason TEXT NOT NULL,
            checked_at REAL NOT NULL);
        CREATE TABLE image_state (digest TEXT PRIMARY KEY, dest TEXT, unreferenced_since REAL);
        PRAGMA user_version=5;"""))
    conn.close()


def test_a_v5_database_reads_read_only_without_delivery_times_and_keeps_them_once_opened(tmp_path):
    from reconciler.delivery import Delivery

    path = tmp_path / "state.db"
    v5_database(path)
    before = path.read_bytes()
    reader = StateDB.read_only(path)  # --dry-run beside a service not yet upgraded
    try:
        (row,) = reader.all()
        assert row.published_digest == "sha256:b"
        assert (reader.deliveries(), reader.pushes()) == ([], {})
    finally:
        reader.close()
    assert path.read_bytes() == before and not (tmp_path / "state.db-wal").exists()
    state = StateDB(path)
    try:
        delivery = Delivery("app:v1", "reg/team/app:v1", "sha256:b", 990.5, 995.0, 1000.0, 7,
                            (("http://s1/cvmfs/r", None), ("http://s2/cvmfs/r", 1010.0)))
        state.record_delivery(delivery)
        state.record_push(("app", None), 1990.0, 1991.0)
        state.record_push(("app", "v2"), 1992.0, 1993.0)
        state.forget_push(("app", None))
        assert state.all()[0].published_digest == "sha256:b"
    finally:
        state.close()
    state = StateDB(path)
    try:
        assert state.deliveries() == [delivery]
        assert state.pushes() == {("app", "v2"): (1992.0, 1993.0)}
        state.forget_delivery("app:v1")
        assert state.deliveries() == []
    finally:
        state.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 6
