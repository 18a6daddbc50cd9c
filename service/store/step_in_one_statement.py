"""A step's write as one PostgreSQL statement: the job's conditional UPDATE with its rounds, events and result.

Written one by one, a step's last write is six round trips — BEGIN, the round
rows, the events, the result, the job's UPDATE, COMMIT — each paid in client
and server CPU. On PostgreSQL the inserts are data-modifying CTEs that take
the job's id from the UPDATE's RETURNING row, so they insert nothing unless
the UPDATE matched (the lease is still ours), and the statement, autocommitted,
is atomic: all of it or none, in one round trip.

The rows go in as one JSON array per table (``json_to_recordset``), typed by
the tables' own column types; events keep their order (their ``n``). SQLite
has no data-modifying CTEs: there — and whenever the step's transaction holds
other work, which must commit with it — ``PendingWrites`` writes statement by
statement.
"""

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, Select, Table, bindparam, column, func, insert, select, true
from sqlalchemy.orm import Session

from qkan_orch.service.store.database import ONE_STATEMENT
from qkan_orch.service.store.jobs import JOBS, LeaseLost, change_parameters, change_statement
from qkan_orch.service.store.tables import JobEvent, JobResult, Round, utcnow

ROUNDS: Table = Round.__table__  # type: ignore[assignment]
EVENTS: Table = JobEvent.__table__  # type: ignore[assignment]
RESULTS: Table = JobResult.__table__  # type: ignore[assignment]
ROUND_COLUMNS = ("number", "rows", "requested", "executions", "shots", "provider_job_ids", "submitted_at",
                 "finished_at", "seconds")
EVENT_COLUMNS = ("kind", "at", "data")


def possible(session: Session) -> bool:
    """PostgreSQL, and nothing else waiting to commit with the write (no transaction open, no pending rows)."""
    return (session.get_bind().dialect.name == "postgresql" and not session.in_transaction()
            and not (session.new or session.dirty or session.deleted))


def change(session: Session, job_id: str, token: str, added: Mapping[str, int | float],
           rounds: list[dict[str, Any]], events: list[dict[str, Any]], result: tuple[bytes, dict[str, Any]] | None,
           **values: Any) -> bool:
    """``store.change`` with ``rounds`` (``PendingWrites.round``), ``events`` (``PendingWrites.event``) and the
    job's ``result`` (arrays, summary) inserted if the UPDATE matches, committed; the cancel flag, or LeaseLost
    (and nothing written) if the lease is gone."""
    values = {**values, "updated_at": utcnow()}  # a CTE's UPDATE gets no onupdate value of its own
    parameters = change_parameters(job_id, token, added, values)
    if rounds:
        parameters["rounds"] = [{k: _json(row[k]) for k in ROUND_COLUMNS} for row in rounds]
    if events:
        parameters["events"] = [{"kind": e["kind"], "at": e["at"].isoformat(), "data": e["data"], "n": n}
                                for n, e in enumerate(events)]
    if result is not None:
        parameters["arrays"], parameters["summary"] = result
    statement = _statement(frozenset(values), frozenset(added), bool(rounds), bool(events), result is not None)
    row = session.connection(execution_options=ONE_STATEMENT).execute(statement, parameters).first()
    if row is None:
        raise LeaseLost(job_id)
    return bool(row[0])


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@functools.cache
def _statement(setting: frozenset[str], adding: frozenset[str], rounds: bool, events: bool, result: bool) -> Select:
    """The statement for one shape of write, built once (as ``change``'s UPDATE): the job's UPDATE as the CTE
    ``job``, an insert CTE per kind of row present, the cancel flag selected from ``job``."""
    job = change_statement(setting, adding).returning(JOBS.c.id).cte("job")
    inserts = []
    if rounds:
        source = _recordset("r", ROUNDS, ROUND_COLUMNS, "rounds")
        inserts.append(insert(ROUNDS).from_select(
            ["job_id", *ROUND_COLUMNS],
            select(job.c.id, *(source.c[name] for name in ROUND_COLUMNS)).select_from(job).join(source, true()),
        ).cte("rounds_in"))
    if events:
        source = _recordset("e", EVENTS, EVENT_COLUMNS, "events", ordinal="n")
        inserts.append(insert(EVENTS).from_select(
            ["job_id", *EVENT_COLUMNS],
            select(job.c.id, *(source.c[name] for name in EVENT_COLUMNS)).select_from(job).join(source, true())
            .order_by(source.c.n),  # ids in the order the step logged them: the events stream's order
        ).cte("events_in"))
    if result:
        inserts.append(insert(RESULTS).from_select(
            ["job_id", "arrays", "summary"],
            select(job.c.id, bindparam("arrays", type_=RESULTS.c.arrays.type), bindparam("summary", type_=JSON)),
        ).cte("result_in"))
    return select(job.c.cancel_requested).add_cte(*inserts)


def _recordset(name: str, table: Table, names: tuple[str, ...], parameter: str, ordinal: str | None = None) -> Any:
    """``json_to_recordset(:parameter) AS name(column type, ...)`` with ``table``'s types (and an integer
    ``ordinal``)."""
    columns = [column(n, table.c[n].type) for n in names] + ([column(ordinal, Integer)] if ordinal else [])
    return (func.json_to_recordset(bindparam(parameter, type_=JSON)).table_valued(*columns)
            .render_derived(name=name, with_types=True))
