"""The data lifecycle's SQL (retention, compaction, the storage report), in one place. What may be
removed is decided by the database's functions (fleetgate_drop_history_partition,
fleetgate_expire_rows in schema.sql); these statements plan, call them and measure."""

from __future__ import annotations

from typing import Final

# One process of all that share the database runs the lifecycle at a time ("fleetlc"); the
# others skip their turn. Held by the session, for the whole run.
LIFECYCLE_LOCK: Final = 0x666C6565746C63
TRY_LOCK: Final = b"SELECT pg_try_advisory_lock(%s)"
UNLOCK: Final = b"SELECT pg_advisory_unlock(%s)"

# The daily partitions of one history table (%s: the table), with their sizes and PostgreSQL's
# estimate of their rows (reltuples: -1 until the first VACUUM or ANALYZE).
HISTORY_DAYS: Final = b"""
SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid),
       pg_indexes_size(c.oid), c.reltuples::bigint
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = %s::regclass AND c.relkind = 'r'
"""
HORIZONS: Final = b"SELECT device_kind, kept_from FROM history_horizon"
COMPACTED: Final = b"SELECT device_kind, day FROM history_compaction"

ENSURE_PARTITION: Final = b"SELECT fleetgate_ensure_partition(%s::regclass, %s)"
DROP_PARTITION: Final = b"SELECT fleetgate_drop_history_partition(%s::regclass, %s)"
# At most %s rows of a table from before a time, in a transaction of its own.
EXPIRE_ROWS: Final = b"SELECT fleetgate_expire_rows(%s::regclass, %s, %s)"

# The rows fleetgate_expire_rows would delete from each table, by the same condition.
_EXPIRED_WHERE: Final = {
    "meter_hourly": "hour < %(before)s",
    "vehicle_hourly": "hour < %(before)s",
    "meter_daily": "day < %(before)s",
    "vehicle_daily": "day < %(before)s",
    "dead_letter": "received_at < %(before)s",
    "dead_letter_overflow": "last_received_at < %(before)s",
    "alert": "raised_at < %(before)s AND cleared_at < %(before)s",
}
COUNT_EXPIRED: Final = {
    table: f"SELECT count(*) FROM {table} WHERE {where}".encode()
    for table, where in _EXPIRED_WHERE.items()
}

TABLE_BYTES: Final = b"SELECT pg_total_relation_size(%s::regclass)"
INDEX_BYTES: Final = b"SELECT pg_indexes_size(%s::regclass)"

# Whether this login may rebuild the indexes of the history tables' partitions: REINDEX takes
# their owner (PostgreSQL 15 grants it to no one else, and no function can run it CONCURRENTLY).
MAY_REINDEX: Final = b"""
SELECT pg_has_role(current_user, c.relowner, 'USAGE'), c.relowner::regrole::text
FROM pg_class c WHERE c.oid = 'meter_reading'::regclass
"""
# Indexes that an interrupted REINDEX CONCURRENTLY left behind on a history partition: invalid,
# named *_ccnew or *_ccold (PostgreSQL's names), still costing every insert.
LEFTOVER_INDEXES: Final = b"""
SELECT x.indexrelid::regclass::text
FROM pg_index x
JOIN pg_class ix ON ix.oid = x.indexrelid
JOIN pg_inherits i ON i.inhrelid = x.indrelid
WHERE i.inhparent IN ('meter_reading'::regclass, 'vehicle_reading'::regclass)
  AND NOT x.indisvalid AND ix.relname ~ '_cc(new|old)[0-9]*$'
ORDER BY 1
"""
RECORD_COMPACTION: Final = b"""
INSERT INTO history_compaction (device_kind, day, compacted_at, index_bytes_before,
                                index_bytes_after)
VALUES (%s, %s, now(), %s, %s)
ON CONFLICT (device_kind, day) DO UPDATE SET
    compacted_at = EXCLUDED.compacted_at, index_bytes_before = EXCLUDED.index_bytes_before,
    index_bytes_after = EXCLUDED.index_bytes_after
"""


def reindex(partition: str) -> bytes:
    """``partition`` is a name read from pg_class and checked against the partitions' pattern."""
    return f'REINDEX TABLE CONCURRENTLY "{partition}"'.encode()


def drop_index(index: str) -> bytes:
    """``index`` as regclass prints it (quoted where it needs to be)."""
    return f"DROP INDEX CONCURRENTLY IF EXISTS {index}".encode()
