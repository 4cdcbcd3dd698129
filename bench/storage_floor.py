"""The fewest bytes per row that PostgreSQL's page layout allows for a history partition and its
primary key, computed from the columns' catalog entries (pg_attribute.attlen, attalign) and the
server's block size and alignment (pg_control_init), not from hard-coded widths."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import psycopg

HEAP_TUPLE_HEADER: Final = 23  # HeapTupleHeaderData, before MAXALIGN
INDEX_TUPLE_HEADER: Final = 8  # IndexTupleData (t_tid + t_info)
LINE_POINTER: Final = 4  # ItemIdData
PAGE_HEADER: Final = 24  # PageHeaderData
BTREE_SPECIAL: Final = 16  # BTPageOpaqueData at the end of every B-tree page
MAX_HEAP_TUPLES_PER_PAGE: Final = 291  # MaxHeapTuplesPerPage at 8 kB
_ALIGN: Final = {"c": 1, "s": 2, "i": 4, "d": 8}

HOW: Final = (
    "floor: heap = block / floor((block - 24 page header - fillfactor reserve)"
    " / (MAXALIGN(MAXALIGN(23-byte tuple header) + columns at their attalign) + 4 line pointer));"
    " PK = block / (floor((block - 24 - 16 B-tree special - reserve at leaf fillfactor)"
    " / (MAXALIGN(8-byte index tuple header + key columns aligned) + 4)) - 1 high key),"
    " leaf pages only (inner pages add under 1 %); widths from pg_attribute, block size and"
    " MAXALIGN from pg_control_init()"
)

_COLUMNS: Final = b"""
SELECT a.attlen, a.attalign, a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_PRIMARY_KEY: Final = b"""
SELECT x.indexrelid::regclass::text, coalesce(ix.reloptions, '{}'), coalesce(c.reloptions, '{}')
FROM pg_index x JOIN pg_class ix ON ix.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
WHERE x.indrelid = %s::regclass AND x.indisprimary
"""
_LAYOUT: Final = b"SELECT database_block_size, max_data_alignment FROM pg_control_init()"


@dataclasses.dataclass(frozen=True, slots=True)
class Floor:
    """Bytes per row at the layout's floor, and the tuple sizes they come from."""

    heap_tuple: int  # MAXALIGNed, without its line pointer
    heap_per_page: int
    index_tuple: int
    index_per_leaf: int
    block: int

    @property
    def heap_bytes(self) -> float:
        return self.block / self.heap_per_page

    @property
    def index_bytes(self) -> float:
        return self.block / self.index_per_leaf


def _align(offset: int, to: int) -> int:
    return (offset + to - 1) // to * to


def _data_width(start: int, columns: list[tuple[int, str, bool]]) -> int:
    """The offset after the last column, each placed at its alignment from ``start``."""
    offset = start
    for length, align, _ in columns:
        if length < 0:
            raise ValueError("the floor is computed for fixed-width columns only")
        offset = _align(offset, _ALIGN[align]) + length
    return offset


def _fillfactor(options: list[str], default: int) -> int:
    for option in options:
        name, _, value = option.partition("=")
        if name == "fillfactor":
            return int(value)
    return default


async def floor_of(conn: psycopg.AsyncConnection[Any], partition: str) -> Floor:
    """The floor of one partition (a table with fixed-width NOT NULL columns) and its PK."""
    cur = await conn.execute(_LAYOUT)
    block, maxalign = await cur.fetchone() or (8192, 8)
    cur = await conn.execute(_COLUMNS, (partition,))
    columns = [(int(n), str(a), bool(nn)) for n, a, nn in await cur.fetchall()]
    if not all(notnull for *_, notnull in columns):
        raise ValueError(f"{partition}: a nullable column would add a null bitmap")
    cur = await conn.execute(_PRIMARY_KEY, (partition,))
    index, index_options, heap_options = await cur.fetchone() or ("", [], [])
    cur = await conn.execute(_COLUMNS, (index,))
    keys = [(int(n), str(a), True) for n, a, _ in await cur.fetchall()]

    heap_tuple = _align(_data_width(_align(HEAP_TUPLE_HEADER, maxalign), columns), maxalign)
    heap_reserve = block * (100 - _fillfactor(heap_options, 100)) // 100
    heap_per_page = min(
        (block - PAGE_HEADER - heap_reserve) // (heap_tuple + LINE_POINTER),
        MAX_HEAP_TUPLES_PER_PAGE,
    )
    index_tuple = _align(_data_width(_align(INDEX_TUPLE_HEADER, maxalign), keys), maxalign)
    leaf_reserve = block * (100 - _fillfactor(index_options, 90)) // 100
    leaf_space = block - PAGE_HEADER - BTREE_SPECIAL - leaf_reserve
    index_per_leaf = leaf_space // (index_tuple + LINE_POINTER) - 1  # one slot: the high key
    return Floor(heap_tuple, heap_per_page, index_tuple, index_per_leaf, block)
