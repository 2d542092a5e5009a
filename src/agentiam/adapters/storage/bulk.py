"""Many rows into one table as one DBAPI ``executemany``, without SQLAlchemy's per-row
work.

``conn.execute(insert(table), [dict, ...])`` builds, for every row, a parameter
dictionary from the compiled statement (``construct_params``) and runs each value
through its type's bind processor, in Python: for the audit trail's hot inserts (an
ingested batch, the log entries and tree nodes the integrator writes) that cost more
than the database's own work. :class:`BulkInsert` compiles the statement once per
dialect and keeps, per column, the same bind processor SQLAlchemy would apply
(``type.dialect_impl(dialect).bind_processor(dialect)``, e.g. ``UTCDateTime`` then
SQLite's ``DATETIME`` text); a batch is then one ``exec_driver_sql`` of plain rows. The
driver sees the same statement and the same values, so the same rows are stored, in
the same order (one execution per row, as ``executemany`` runs them); the
connection's events and transaction are SQLAlchemy's as ever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Table, insert

__all__ = ["BulkInsert"]

_Processor = Callable[[Any], Any]


class _Compiled:
    __slots__ = ("in_order", "order", "positional", "processors", "sql")

    def __init__(
        self,
        sql: str,
        positional: bool,
        order: tuple[int, ...],
        processors: tuple[tuple[int, _Processor], ...],
    ) -> None:
        self.sql = sql
        self.positional = positional
        self.order = order  # positional: the row index of each placeholder, in order
        self.in_order = positional and order == tuple(range(len(order)))
        self.processors = processors  # (row index, bind processor) of the columns with one


class BulkInsert:
    """An INSERT of ``columns`` of ``table`` (``statement(dialect_name)`` when it is
    dialect-specific, e.g. ``ON CONFLICT DO NOTHING``), compiled once per dialect and
    run with rows given as sequences of plain values in ``columns`` order."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        statement: Callable[[str], Insert] | None = None,
    ) -> None:
        self._table = table
        self.columns = tuple(columns)
        self._statement = statement or (lambda _dialect: insert(table))
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is not None:
            return compiled
        statement = self._statement(dialect.name)
        result = statement.compile(
            dialect=dialect, column_keys=list(self.columns), for_executemany=True
        )
        if result.effective_returning or result.insert_prefetch:
            raise ValueError("a bulk insert cannot return or prefetch values")
        names = tuple(result.positiontup or ()) if result.positional else tuple(result.binds)
        if sorted(names) != sorted(self.columns):
            raise ValueError(f"the statement binds {names}, not the columns {self.columns}")
        index = {name: i for i, name in enumerate(self.columns)}
        processors = []
        for i, name in enumerate(self.columns):
            process = self._table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((i, process))
        compiled = _Compiled(
            result.string,
            bool(result.positional),
            tuple(index[name] for name in names),
            tuple(processors),
        )
        self._compiled[dialect.name] = compiled  # a race compiles it twice, the same
        return compiled

    def execute(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (each in ``columns`` order), in order, in one executemany."""
        if not rows:
            return
        compiled = self._compile(conn.dialect)
        params: list[Any] = []
        for row in rows:
            if len(row) != len(self.columns):
                raise ValueError(f"a row of {len(row)} values for {len(self.columns)} columns")
            values = list(row)
            for i, process in compiled.processors:
                values[i] = process(values[i])
            if compiled.in_order:
                params.append(tuple(values))
            elif compiled.positional:
                params.append(tuple(values[i] for i in compiled.order))
            else:
                params.append(dict(zip(self.columns, values, strict=True)))
        conn.exec_driver_sql(compiled.sql, params)
