"""What a step has done but not yet written: job columns, counter increments, round rows and events.

A local round cheaper than its own transaction is not written at once; its
changes wait here and go out with the step's next conditional UPDATE (or are
recomputed after a crash). Everything here is a plain Python value: counters
are kept as increments and become ``shots_used + n`` only in the UPDATE,
so they add to what the row holds, whoever wrote it last.

A write the database refuses because it cannot be reached (OperationalError)
is tried again, the whole transaction, for up to ``PATIENCE`` seconds: a
provider job submitted during an outage is recorded once the database is back
instead of being submitted again by a later step. The rollback drops what the
transaction held, so everything it carries is kept until it commits: the
values taken from here (columns, counters, rounds, events, the result), the
rows the step added to the session (a round submitted to a provider, a
trained model) and the ORM statements the step executed since the last commit
(a polled round's ``complete_round``). What ``_write`` issues itself with
Core on the session's connection (``store.change``, the log rows, the
result) is not recorded: it issues it again on each try.
"""

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql import Executable

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store import step_in_one_statement as one_statement

log = logging.getLogger("qkan.worker")
PATIENCE = 120.0  # seconds a write waits for an unreachable database before the step gives up
RETRY_FIRST, RETRY_MAX = 0.25, 2.0  # seconds between tries of a write (doubling)


class PendingWrites:
    """The one owner of a step's unwritten changes to its job; each write is one conditional UPDATE and one commit."""

    def __init__(self, session: Session, job_id: str, token: str) -> None:
        self.session, self.job_id, self.token = session, job_id, token
        self.columns: dict[str, Any] = {}
        self.increments: dict[str, int | float] = {}
        self.rounds: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.result: tuple[bytes, dict[str, Any]] | None = None
        # what the transaction holds besides this: rows the session inserted, statements the step executed
        self.flushed: list[object] = []
        self.executed: list[tuple[Executable, Any, Mapping[str, Any]]] = []
        event.listen(session, "before_flush", self._remember_flushed)
        event.listen(session, "do_orm_execute", self._remember_executed)
        event.listen(session, "after_commit", self._forget)

    def set(self, **columns: Any) -> None:
        """Job columns to set (the latest value wins). A value may be a function of no arguments, called when the
        write goes out: one overwritten before that (the plan state after each cheap local round, a finished
        job's) is never computed."""
        self.columns.update(columns)

    def add(self, **amounts: int | float) -> None:
        """Amounts to add to counter columns (shots_used, executions, qpu_seconds, cost)."""
        for name, amount in amounts.items():
            if amount:
                self.increments[name] = self.increments.get(name, 0) + amount

    def round(self, number: int, **values: Any) -> None:
        """The row of a finished round that never went to a provider (so it has no row yet)."""
        self.rounds.append({"job_id": self.job_id, "number": number, **values})

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"job_id": self.job_id, "kind": kind, "at": datetime.now(UTC), "data": data})

    def store_result(self, arrays: bytes, summary: dict[str, Any]) -> None:
        """The job's result (safetensors ``arrays``, ``summary``), written with the next write (``end``'s release)."""
        self.result = (arrays, summary)

    def commit_log(self) -> None:
        """Commit the pending round rows and events alone: progress the event stream should show now."""
        self._write(None)

    def commit(self, **values: Any) -> bool:
        """Write everything pending and ``values``; returns the job's cancel flag. LeaseLost if the lease is gone."""
        return bool(self._write(values))

    def release(self, **values: Any) -> None:
        """Write everything pending and ``values`` and give the lease up, in the same UPDATE."""
        self._write({**values, **store.RELEASED})

    def _write(self, values: dict[str, Any] | None) -> bool | None:
        """The log rows, then (unless ``values`` is None) the job's conditional UPDATE with the pending columns and
        ``values``, one commit — one statement where the database allows (``step_in_one_statement``); the same
        again after a backoff while the database cannot be reached, for up to ``PATIENCE`` seconds."""
        rows, events, stored = self.rounds, self.events, self.result
        columns, amounts = self._take(values) if values is not None else ({}, {})
        added, executed = [*self.flushed, *self.session.new], list(self.executed)
        self.rounds, self.events, self.result = [], [], None
        deadline, delay = time.monotonic() + PATIENCE, RETRY_FIRST
        while True:
            try:
                if values is not None and one_statement.possible(self.session):
                    cancel = one_statement.change(self.session, self.job_id, self.token, amounts, rows, events,
                                                  stored, **columns)
                    self.session.commit()  # the statement committed itself: this gives its connection back
                    return cancel
                store.add_rounds(self.session, rows)
                store.add_events(self.session, events)
                if stored is not None:
                    store.store_result(self.session, self.job_id, *stored)
                result = store.change(self.session, self.job_id, self.token, amounts, **columns) \
                    if values is not None else None
                self.session.commit()
                return result
            except OperationalError as exc:
                self.session.rollback()
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("job %s: the database is unreachable (%s); writing again in %g s", self.job_id,
                            type(exc.orig).__name__, delay)
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
                self.session.add_all(added)
                for statement, parameters, options in executed:
                    self.session.execute(statement, parameters, execution_options=options)

    def _take(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int | float]]:
        """The columns the UPDATE sets and the amounts it adds to counters (a column set outright wins); forget them."""
        columns = {name: value() if callable(value) else value for name, value in {**self.columns, **values}.items()}
        amounts = {name: amount for name, amount in self.increments.items() if name not in columns}
        self.columns, self.increments = {}, {}
        return columns, amounts

    def _remember_flushed(self, session: Session, *_: object) -> None:
        self.flushed.extend(session.new)

    def _remember_executed(self, state: ORMExecuteState) -> None:
        if not state.is_select:
            self.executed.append((state.statement, state.parameters, state.local_execution_options))

    def _forget(self, _: Session) -> None:
        self.flushed, self.executed = [], []
