"""Hand-written DDL and SQL of the two hot tables, per dialect (only SQLite for now).

``sample`` is a rowid table without a surrogate key: one row per sample, integer columns only,
one index for history by ``(point_id, ts_ms)``. ``ingested_msg`` is a WITHOUT ROWID table whose
primary key ``(gateway_id, seq)`` is the idempotency key of every data and event message.
``seq_gap`` holds each gateway's missing seq ranges (rewritten per gateway when they change).
"""

from __future__ import annotations

SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS sample (
    point_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL,
    quality SMALLINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sample_point_ts ON sample (point_id, ts_ms);
CREATE TABLE IF NOT EXISTS ingested_msg (
    gateway_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_gap (
    gateway_id INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    restart SMALLINT NOT NULL,
    PRIMARY KEY (gateway_id, lo)
) WITHOUT ROWID;
"""

SQLITE = {
    "existing_seqs": (
        "SELECT seq FROM ingested_msg WHERE gateway_id = ? AND seq BETWEEN ? AND ?"
    ),
    # + " OR ".join("(gateway_id = ? AND seq BETWEEN ? AND ?)" per gateway)
    "existing_keys": "SELECT gateway_id, seq FROM ingested_msg WHERE ",
    "insert_keys": "INSERT OR IGNORE INTO ingested_msg (gateway_id, seq) VALUES (?, ?)",
    "insert_samples": "INSERT INTO sample (point_id, ts_ms, value, quality) VALUES (?, ?, ?, ?)",
    "update_latest": "UPDATE point SET value = ?, ts_ms = ?, quality = ? WHERE id = ?",
    "update_gateway_seq": (
        "UPDATE gateway SET last_seq = max(coalesce(last_seq, -1), ?) WHERE id = ?"
    ),
    "history_desc": (
        "SELECT ts_ms, value, quality FROM sample WHERE point_id = ? AND ts_ms >= ? AND ts_ms < ?"
        " ORDER BY ts_ms DESC LIMIT ?"
    ),
    "history_asc": (
        "SELECT ts_ms, value, quality FROM sample WHERE point_id = ? AND ts_ms >= ? AND ts_ms < ?"
        " ORDER BY ts_ms ASC LIMIT ?"
    ),
    "count_samples": "SELECT count(*) AS n FROM sample",
    "delete_gaps": "DELETE FROM seq_gap WHERE gateway_id = ?",
    "insert_gap": (
        "INSERT INTO seq_gap (gateway_id, lo, hi, opened_ms, restart) VALUES (?, ?, ?, ?, ?)"
    ),
    "load_gaps": "SELECT gateway_id, lo, hi, opened_ms, restart FROM seq_gap ORDER BY gateway_id, lo",
    "update_last_seen": (
        "UPDATE gateway SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?) WHERE id = ?"
    ),
}
