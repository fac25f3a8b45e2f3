"""Keeping metric roll-ups (experiments.models.MetricRollup) in step with the points.

Every point goes through `metrics_write`, which inserts it and, in the same transaction,
folds it into one bucket per level: the batch is folded in memory (a 1,000-point batch
touches about 70 buckets over four levels) and merged into the stored rows with one
upsert. When the insert ignored some points (a retried batch, a step logged twice), the
touched buckets are rebuilt from the stored points instead, so a point counts once and
the roll-up only ever holds values that are stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from experiments.models import ROLLUP_WIDTHS

POINTS_TABLE = "experiments_metricpoint"
ROLLUP_TABLE = "experiments_metricrollup"

# A bucket while folding: [count, first_step, first_value, last_step, last_value,
# min_step, min_value, max_step, max_value, gap_step] (the columns, in this order).
Acc = list[Any]
Folded = dict[tuple[str, int], Acc]

COLUMNS = (
    "count",
    "first_step",
    "first_value",
    "last_step",
    "last_value",
    "min_step",
    "min_value",
    "max_step",
    "max_value",
    "gap_step",
)
_LEVELS = sorted(ROLLUP_WIDTHS)
# Every width is the one below times this factor (checked at import: the fold relies on it).
_FACTOR = 16
assert all(ROLLUP_WIDTHS[level] == _FACTOR**level for level in _LEVELS)
_SHIFT = 4  # log2(_FACTOR)


# Rows per SQLite statement: one statement of 1,000 rows binds 6,000 values, well within
# SQLite's bound on variables (32,766 by default; read from the connection besides).
_SQLITE_ROWS_PER_STATEMENT = 1000


def insert_many(
    cursor: Any, head: str, rows: list[tuple[Any, ...]], tail: str = "", *, pg_types: tuple[str, ...]
) -> int:
    """Run `head <rows> tail` for every row; return how many rows it wrote.

    On PostgreSQL the rows go as one array per column through unnest() (pg_types names
    the array types): executemany there cost a round trip per row, and a multi-row VALUES
    cost the driver longer to split than the server to run. On SQLite they go as multi-row
    VALUES of up to 1,000 rows, to the driver's own connection with its "?" placeholders:
    executemany steps the statement (and hands the GIL back and forth) once per row, which
    took two to five times longer for a batch, and Django's cursor would rewrite thousands
    of placeholders on every call. The statement runs in the caller's transaction, but
    outside Django's cursor (query logging and execute wrappers do not see it).
    """
    if not rows:
        return 0
    if cursor.db.vendor == "postgresql":
        arrays = ", ".join(f"%s::{kind}[]" for kind in pg_types)
        cursor.execute(
            f"{head} SELECT * FROM unnest({arrays}) {tail}", [list(col) for col in zip(*rows, strict=True)]
        )
        return int(cursor.rowcount)
    driver = cursor.db.connection  # the sqlite3 connection under Django's
    width = len(rows[0])
    per_statement = max(
        1, min(_SQLITE_ROWS_PER_STATEMENT, driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    )
    one = "(" + ",".join("?" * width) + ")"
    written = 0
    for start in range(0, len(rows), per_statement):
        part = rows[start : start + per_statement]
        sql = f"{head} VALUES {','.join([one] * len(part))} {tail}"
        written += driver.execute(sql, list(chain.from_iterable(part))).rowcount
    return written


def fold_points(points: Iterable[tuple[str, int, float | None]]) -> Folded:
    """Return the level-1 buckets of (name, step, value) points, keyed (name, bucket)."""
    acc: Folded = {}
    shift = _SHIFT * _LEVELS[0]
    for name, step, value in points:
        key = (name, step >> shift)
        b = acc.get(key)
        if b is None:
            if value is None:
                acc[key] = [1, step, None, step, None, None, None, None, None, step]
            else:
                acc[key] = [1, step, value, step, value, step, value, step, value, None]
            continue
        b[0] += 1
        if step < b[1]:
            b[1] = step
            b[2] = value
        if step > b[3]:
            b[3] = step
            b[4] = value
        if value is None:
            if b[9] is None or step < b[9]:
                b[9] = step
            continue
        low = b[6]
        if low is None or value < low or (value == low and step < b[5]):
            b[5] = step
            b[6] = value
        high = b[8]
        if high is None or value > high or (value == high and step < b[7]):
            b[7] = step
            b[8] = value
    return acc


def merge_into(acc: Acc, other: Acc) -> None:
    """Fold bucket `other` into `acc` (ties on min and max go to the earlier step)."""
    acc[0] += other[0]
    if other[1] < acc[1]:
        acc[1], acc[2] = other[1], other[2]
    if other[3] > acc[3]:
        acc[3], acc[4] = other[3], other[4]
    if other[6] is not None and (
        acc[6] is None or other[6] < acc[6] or (other[6] == acc[6] and other[5] < acc[5])
    ):
        acc[5], acc[6] = other[5], other[6]
    if other[8] is not None and (
        acc[8] is None or other[8] > acc[8] or (other[8] == acc[8] and other[7] < acc[7])
    ):
        acc[7], acc[8] = other[7], other[8]
    if other[9] is not None and (acc[9] is None or other[9] < acc[9]):
        acc[9] = other[9]


def fold_levels(points: Iterable[tuple[str, int, float | None]]) -> Iterator[tuple[int, Folded]]:
    """Yield (level, buckets) for every level, each level folded from the one below."""
    below = fold_points(points)
    yield _LEVELS[0], below
    for level in _LEVELS[1:]:
        above: Folded = {}
        for (name, bucket), b in below.items():
            key = (name, bucket >> _SHIFT)
            current = above.get(key)
            if current is None:
                above[key] = list(b)
            else:
                merge_into(current, b)
        yield level, above
        below = above


_NAMES = ("run_id", "name", "level", "bucket", *COLUMNS)
# run_id, name, level, bucket, then COLUMNS: (count, step, value, step, value, ...), gap_step.
_PG_TYPES = ("bigint", "text", "int", "bigint", "bigint", *(("bigint", "float8") * 4), "bigint")


def _insert_head(quote: Any) -> str:
    return f"INSERT INTO {quote(ROLLUP_TABLE)} ({', '.join(_NAMES)})"


def _upsert_tail(quote: Any) -> str:
    """Return the ON CONFLICT clause that adds a folded bucket to its stored row (SQLite 3.24+ and PostgreSQL)."""
    t = quote(ROLLUP_TABLE)

    def smaller(value: str, step: str) -> str:
        # The incoming bucket's extreme replaces the stored one when it is lower (ties: earlier step).
        return (
            f"excluded.{value} IS NOT NULL AND ({t}.{value} IS NULL OR excluded.{value} < {t}.{value} "
            f"OR (excluded.{value} = {t}.{value} AND excluded.{step} < {t}.{step}))"
        )

    def larger(value: str, step: str) -> str:
        return (
            f"excluded.{value} IS NOT NULL AND ({t}.{value} IS NULL OR excluded.{value} > {t}.{value} "
            f"OR (excluded.{value} = {t}.{value} AND excluded.{step} < {t}.{step}))"
        )

    def pick(cond: str, column: str) -> str:
        return f"{column} = CASE WHEN {cond} THEN excluded.{column} ELSE {t}.{column} END"

    # Every SET expression reads the stored row as it was before this statement.
    first = f"excluded.first_step < {t}.first_step"
    last = f"excluded.last_step > {t}.last_step"
    low = smaller("min_value", "min_step")
    high = larger("max_value", "max_step")
    gap = f"excluded.gap_step IS NOT NULL AND ({t}.gap_step IS NULL OR excluded.gap_step < {t}.gap_step)"
    sets = [
        f"count = {t}.count + excluded.count",
        pick(first, "first_step"),
        pick(first, "first_value"),
        pick(last, "last_step"),
        pick(last, "last_value"),
        pick(low, "min_step"),
        pick(low, "min_value"),
        pick(high, "max_step"),
        pick(high, "max_value"),
        pick(gap, "gap_step"),
    ]
    return f"ON CONFLICT (run_id, name, level, bucket) DO UPDATE SET {', '.join(sets)}"


_SQL_CACHE: dict[str, str] = {}


def _rows(run_id: int, levels: Iterable[tuple[int, Folded]]) -> list[tuple[Any, ...]]:
    return [
        (run_id, name, level, bucket, *b) for level, folded in levels for (name, bucket), b in folded.items()
    ]


def rollups_add(
    cursor: Any, *, run_id: int, points: list[tuple[str, int, float | None]], all_new: bool
) -> None:
    """Fold points just inserted for run_id into its roll-ups (call in the insert's transaction).

    all_new says the insert stored every point; otherwise the buckets the batch touches
    are rebuilt from the stored points (exact whatever was ignored).
    """
    if not points:
        return
    connection = cursor.db
    if not all_new:
        spans: dict[str, tuple[int, int]] = {}
        for name, step, _value in points:
            low, high = spans.get(name, (step, step))
            spans[name] = (min(low, step), max(high, step))
        for name, (low, high) in spans.items():
            rollups_rebuild(cursor, run_id=run_id, name=name, low=low, high=high)
        return
    tail = _SQL_CACHE.get(connection.vendor)
    if tail is None:
        tail = _SQL_CACHE[connection.vendor] = _upsert_tail(connection.ops.quote_name)
    head = _insert_head(connection.ops.quote_name)
    insert_many(cursor, head, _rows(run_id, fold_levels(points)), tail, pg_types=_PG_TYPES)


def rollups_rebuild(cursor: Any, *, run_id: int, name: str, low: int = 0, high: int | None = None) -> None:
    """Recompute, from the stored points, every bucket of run_id's metric `name` covering steps low..high.

    The span is widened to whole buckets of the coarsest level, which are whole buckets
    of every level: each bucket touched is replaced, none is left half-counted.
    """
    connection = cursor.db
    quote = connection.ops.quote_name
    widest = ROLLUP_WIDTHS[_LEVELS[-1]]
    first = low // widest * widest
    params: list[Any] = [run_id, name, first]
    where = "run_id = %s AND name = %s AND step >= %s"
    if high is not None:
        last = (high // widest + 1) * widest - 1
        where += " AND step <= %s"
        params.append(last)
    cursor.execute(f"SELECT name, step, value FROM {quote(POINTS_TABLE)} WHERE {where} ORDER BY step", params)
    levels = list(fold_levels(_fetch_in_chunks(cursor)))
    for level, width in ROLLUP_WIDTHS.items():
        bounds: list[Any] = [run_id, name, level, first // width]
        clause = "run_id = %s AND name = %s AND level = %s AND bucket >= %s"
        if high is not None:
            clause += " AND bucket <= %s"
            bounds.append(last // width)
        cursor.execute(f"DELETE FROM {quote(ROLLUP_TABLE)} WHERE {clause}", bounds)
    insert_many(cursor, _insert_head(quote), _rows(run_id, levels), pg_types=_PG_TYPES)


def _fetch_in_chunks(cursor: Any, size: int = 20_000) -> Iterator[tuple[str, int, float | None]]:
    while True:
        chunk = cursor.fetchmany(size)
        if not chunk:
            return
        yield from chunk


def rollups_backfill(connection: Any) -> int:
    """Build the roll-ups of every stored series (the migration that adds them runs this); return how many."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT run_id, name FROM {quote(POINTS_TABLE)}")
        series = cursor.fetchall()
        for run_id, name in series:
            rollups_rebuild(cursor, run_id=run_id, name=name)
    return len(series)
