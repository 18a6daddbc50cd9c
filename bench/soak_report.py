"""What bench/soak.py measures besides the jobs (memory, database size) and the table it prints and writes."""

import argparse
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psutil
from load_cpu import process_tree
from load_report import stats
from sqlalchemy import Engine, text

from qkan_orch.service.local import LocalService

GROWTH_GOAL = 0.20  # RSS may grow by at most this share from after the warm-up to the end


def group_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (a worker: Celery's main process and its pool)."""
    total = 0
    for process in process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def memory_of(service: LocalService) -> dict[str, int]:
    """RSS of each API process and each worker group now, by name (``worker 1`` is never killed)."""
    rss = {f"API {n}": group_rss(p.pid) for n, p in enumerate(service.api_processes, 1)}
    rss.update({f"worker {n}": group_rss(p.pid) for n, p in enumerate(service.workers, 1)})
    return rss


@dataclass
class Measures:
    """Memory and database size at the run's milestones (bytes)."""

    database_start: int
    database_warm: int | None = None
    database_end: int | None = None
    rss_start: dict[str, int] | None = None  # after the warm-up
    rss_end: dict[str, int] | None = None

    @staticmethod
    def database_size(engine: Engine) -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


@dataclass
class Outcome:
    """The jobs' fate as the API reports it after the drain."""

    submitted: int
    refused: dict[str, int]  # submissions answered with an error, by "status code"
    states: dict[str, int]
    lost: int
    failed_codes: dict[str, int]
    failed_without_cancel: int
    cancel_asked: int
    latency: list[float]  # s, submit → terminal, every terminal job
    latency_by_backend: dict[str, list[float]] = field(default_factory=dict)  # succeeded jobs only
    kills: list[float] = field(default_factory=list)
    behind: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # client calls that raised, other than refusals
    cancel_too_late: int = 0


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def _s(value: float | int | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {memory:.1f} GiB RAM, {platform.system()} {platform.release()}"


def lines(args: argparse.Namespace, out: Outcome, m: Measures) -> list[str]:
    """The report as markdown."""
    lat = stats(out.latency)
    states = out.states
    rows = [
        "| measure | value | goal |", "|---|---|---|",
        f"| jobs submitted | {out.submitted} (refused: {out.refused or 0}) | |",
        f"| succeeded | {states.get('succeeded', 0)} | |",
        f"| failed | {states.get('failed', 0)} ({out.failed_without_cancel} without a cancel asked; codes "
        f"{out.failed_codes or '—'}) | 0 without a cancel |",
        f"| cancelled | {states.get('cancelled', 0)} (cancels accepted {out.cancel_asked}, too late: job "
        f"finished {out.cancel_too_late}) | |",
        f"| client calls that raised (not refusals) | {out.errors or 0} | 0 |",
        f"| lost (not terminal {args.drain:g} s after the last submission) | {out.lost} | 0 |",
        f"| latency submit → terminal, p50 / p99 / max | {_s(lat['p50'])} / {_s(lat['p99'])} / {_s(lat['max'])} | |",
    ]
    for backend, values in out.latency_by_backend.items():
        b = stats(values)
        rows.append(f"| — succeeded on {backend} (n={b['n']}), p50 / p99 | {_s(b['p50'])} / {_s(b['p99'])} | |")
    names = sorted(set(m.rss_start or {}) | set(m.rss_end or {}))
    for name in names:
        start, end = (m.rss_start or {}).get(name), (m.rss_end or {}).get(name)
        growth = f"{100 * (end / start - 1):+.1f} %" if start and end else "—"
        note = " (killed and restarted: end is a younger process)" if name != "worker 1" and name.startswith(
            "worker") and out.kills else ""
        rows.append(f"| RSS {name}{note}, after warm-up → end | {_mib(start)} → {_mib(end)} ({growth}) | "
                    f"≤ +{100 * GROWTH_GOAL:.0f} % |")
    rows += [
        f"| database size: empty → after warm-up → end | {_mib(m.database_start)} → {_mib(m.database_warm)} → "
        f"{_mib(m.database_end)} | |",
        f"| workers SIGKILLed at (s) | {', '.join(f'{k:g}' for k in out.kills) or '—'} | |",
        f"| most the submitter fell behind its schedule | {_s(out.behind)} | |",
    ]
    return rows


def print_and_write(args: argparse.Namespace, out: Outcome, m: Measures) -> None:
    """Print the table, and write it with the command, machine and date to ``args.results``."""
    table = lines(args, out, m)
    print("\n".join(table))
    header = [
        "# Soak", "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['bench/soak.py', *sys.argv[1:]])}`  ",
        f"Machine: {_machine()}, load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(shared with other work)  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Load: {args.minutes:g} min at {args.rate:g} jobs/s, {args.workers} workers × {args.concurrency} "
        f"process(es), one API process, PostgreSQL + system Redis", "",
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(header + table) + "\n")
