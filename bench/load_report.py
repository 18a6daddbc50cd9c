"""The load benchmark's report: statistics, the goals, the readable table and the JSON line."""

import argparse
import dataclasses
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from load_floor import COMMITS_BEFORE_FINISHED, CommitCost

# Ratios from one run, because absolute rates move with the shared machine's load (issue 15, item 11)
THROUGHPUT_GOAL = 1 / 3  # service jobs/s ÷ bare Celery noops/s, both 500 at once
LATENCY_GOAL = 3.0  # service p50 ÷ bare round-trip p50, one at a time


def log(message: str) -> None:
    """Progress note on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict[str, float | int | None]:
    """n, p50, p99, mean, max (seconds in, seconds out); None where there is nothing to summarise."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "max": float(a.max())}


def ms(value: float | None, width: int = 8) -> str:
    return f"{'—':>{width}}" if value is None else f"{1000 * value:{width}.1f}"


@dataclass
class Phase:
    """One measured phase: per-item start (client clock) and done (worker clock) times."""

    label: str
    starts: list[float]
    dones: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latencies(self) -> list[float]:
        return [d - s for s, d in zip(self.starts, self.dones, strict=True)]

    @property
    def rate(self) -> float:
        return len(self.dones) / (max(self.dones) - min(self.starts))

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "latency_s": stats(self.latencies), "per_second": self.rate, **self.extra}


def print_report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The readable part: results, goals, then where the time goes."""
    out: list[str] = []
    head = result["header"]
    out.append(f"QKAN service load — stack {args.stack}, worker concurrency {args.concurrency} (prefork), "
               f"{args.jobs} jobs at once from {args.threads} client threads, {args.samples} samples/job, "
               f"backend exact")
    out.append(f"host: {head['cpus']} CPUs, load average before {head['loadavg_before']}, after "
               f"{head['loadavg_after']}; python {head['python']}, celery {head['celery']}; shared machine — "
               f"other processes move these numbers")
    out.append("the API runs in a qkan-orch serve process of its own" if head["api"] == "process" else
               "the API runs on a thread of this process, sharing its GIL with the client threads and the "
               "event receiver")
    out.append("")
    out.append(f"{'':42}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'per s':>9}")
    for key in ("bare_sequential", "bare_concurrent", "floor_sequential", "floor_no_flush", "floor_concurrent",
                "floor_duties_sequential", "floor_duties_concurrent", "service_sequential", "service_concurrent"):
        if key not in result:
            continue
        phase = result[key]
        lat = phase["latency_s"]
        rate = f"{phase['per_second']:9.1f}" if "concurrent" in key else f"{'':9}"
        out.append(f"{phase['label']:42}{lat['n']:5d}{ms(lat['p50'], 9)}{ms(lat['p99'], 9)}{ms(lat['max'], 9)}{rate}")
    out.append("latency = done − client clock before publish/POST; done = task-succeeded event (bare, floor) or "
               "the job's finished_at (service)")
    posts = [f"{result[k]['label'].split(', one')[0]} {ms(result[k]['post_s']['p50'], 0)} ms"
             for k in ("floor_sequential", "floor_no_flush", "floor_duties_sequential") if k in result]
    if posts:
        seq_post = result["service_sequential"]["segments"]["POST round trip (client)"]["p50"]
        out.append("POST → 202 at the client, p50 one at a time: " + ", ".join(posts)
                   + f", service {ms(seq_post, 0)} ms")
    failed = result["service_concurrent"]["failed"] + result["service_sequential"]["failed"]
    floor_failed = sum(result[k]["failed"] for k in ("floor_sequential", "floor_no_flush", "floor_concurrent",
                                                     "floor_duties_sequential", "floor_duties_concurrent")
                       if k in result)
    if failed or floor_failed or result["bare_concurrent"]["failed"]:
        out.append(f"FAILURES: {failed} jobs, {floor_failed} floor jobs, {result['bare_concurrent']['failed']} noops "
                   "did not succeed")
    out.append("")
    out.append("goals")
    for goal in result["goals"]:
        verdict = "—" if goal["met"] is None else ("MET" if goal["met"] else "NOT MET")
        out.append(f"  {goal['goal']:54}{goal['value']:>22}   {verdict}")
    out.append("")
    out.append("where a job's time goes (p50 / p99 ms; server stamps and events, one clock)")
    out.append(f"{'':48}{'one at a time':>20}{'all at once':>20}")
    seq, conc = result["service_sequential"]["segments"], result["service_concurrent"]["segments"]
    for name in conc:
        if name == "tasks per job":
            continue
        a, b = seq.get(name, {}), conc[name]
        out.append(f"  {name:46}{ms(a.get('p50'), 9)} /{ms(a.get('p99'), 8)}{ms(b['p50'], 10)} /{ms(b['p99'], 8)}")
    out.append(f"  {'Celery tasks per job (mean)':46}{seq['tasks per job']['mean']:18.2f}"
               f"{conc['tasks per job']['mean']:20.2f}")
    out.append("")
    cpu = result["cpu_ms_per_item"]
    roles = list(dict.fromkeys(role for phase in cpu.values() for role in phase))
    out.append(f"CPU ms per noop / job, from psutil ({head['cpus']} cores = {head['cpus']}000 ms per second of wall "
               f"time; the kernel counts 10 ms ticks, so one-at-a-time rows are coarse)")
    width = max(len(name) for name in cpu) + 2
    out.append(f"  {'':42}" + "".join(f"{name:>{width}}" for name in cpu))
    for role in roles:
        out.append(f"  {role:42}" + "".join(
            f"{phase[role]:{width}.2f}" if role in phase else f"{'—':>{width}}" for phase in cpu.values()))
    for name, phase in cpu.items():
        if "at once" in name:
            ceiling = head["cpus"] * 1000 / phase["all of the above"]
            out.append(f"  {name}: the CPU alone caps this at {ceiling:.0f}/s on {head['cpus']} cores "
                       f"(if nothing else ran and every core were busy)")
            if phase["other processes on the machine"] > 0.25 * phase["all of the above"]:
                share = phase["other processes on the machine"] / phase["all of the above"]
                out.append(f"  WARNING: other processes used {share:.0%} as much CPU as this run during '{name}': "
                           f"its rate is lower than this machine can do alone")
    out.append("")
    out.append("worker log, 'succeeded in Xs' (ms)   n      p50      p99     mean")
    for name, values in result["worker_log"].items():
        out.append(f"  {name:32}{values['n']:5d}{ms(values['p50'], 9)}{ms(values['p99'], 9)}{ms(values['mean'], 9)}")
    out.append("")
    if "api_sql_concurrent" not in result:
        out.append("API SQL statements: not metered (the API runs in its own process; --api thread meters them)")
    for key, label in (("api_sql_sequential", "one at a time"), ("api_sql_concurrent", "all at once")):
        if key not in result:
            continue
        api = result[key]
        out.append(f"API process per submission ({label}): {api['statements']:.1f} SQL statements "
                   f"{api['statement_ms']:.2f} ms, {api['commits']:.1f} commits {api['commit_ms']:.2f} ms, "
                   f"{api['pool_checkouts']:.1f} pool checkouts, {api['publishes']:.1f} broker publish "
                   f"{api['publish_ms']:.2f} ms")
    if "api_sql_concurrent" in result:
        out.append("  statements per submission: " + ", ".join(
            f"{k} ×{v['count']:.1f}" for k, v in result["api_sql_concurrent"]["by_kind"].items()))
    if result.get("pg_per_job"):
        pg = result["pg_per_job"]
        out.append(f"PostgreSQL per job, API + worker ({args.jobs} at once): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in pg.items()))
    if result.get("commit_cost"):
        c = result["commit_cost"]
        out.append(f"PostgreSQL p50: round trip {1000 * c.round_trip:.2f} ms, INSERT + durable COMMIT "
                   f"{1000 * c.durable_commit:.2f} ms (synchronous_commit={c.synchronous_commit}, "
                   f"wal_sync_method={c.wal_sync_method})")
    if result.get("redis_per_task"):
        rd = result["redis_per_task"]
        out.append(f"embedded Redis commands per noop {rd['noop']['total']:.1f}, per job {rd['job']['total']:.1f}")
        out.append("  per job: " + ", ".join(f"{k} {v:.1f}" for k, v in rd["job"]["by_command"].items() if v >= 0.05))
    prof = result.get("worker_profile")
    if prof:
        sql = prof["sql"]
        out.append("")
        out.append(f"worker path in this process (advance_job, {prof['jobs']} jobs, no queueing): "
                   f"p50 {ms(prof['wall_s']['p50'], 0)} ms, mean {ms(prof['wall_s']['mean'], 0)} ms per job; "
                   f"{sql['statements']:.1f} SQL statements {sql['statement_ms']:.2f} ms, "
                   f"{sql['commits']:.1f} commits {sql['commit_ms']:.2f} ms, {sql['pool_checkouts']:.1f} pool "
                   f"checkouts; end states {prof['states']}")
        out.append("  statements per job: " + ", ".join(
            f"{k} ×{v['count']:.1f} ({v['ms']:.2f} ms)" for k, v in sql["by_kind"].items()))
        out.append("  cProfile (slows Python-heavy code ~2×), self ms per job by package: " + ", ".join(
            f"{k} {v:.2f}" for k, v in prof["cprofile"]["self_ms_by_package"].items() if v >= 0.05))
        out.append("  cProfile, this repo's functions, cumulative ms per job:")
        for row in prof["cprofile"]["repo_functions"]:
            out.append(f"    {row['ms_per_job']:8.2f} ms {row['calls_per_job']:7.1f} calls  {row['function']}")
    print("\n".join(out))


def goals(bare_seq: Phase, bare_conc: Phase, svc_seq: Phase, svc_conc: Phase, commits: CommitCost | None = None,
          floor_seq: Phase | None = None, floor_conc: Phase | None = None,
          floor_no_flush: Phase | None = None, duties_seq: Phase | None = None,
          duties_conc: Phase | None = None) -> list[dict[str, Any]]:
    """The issue's two goals, as ratios to bare Celery in the same run; then the loaded latency ratio, the
    absolute rate and (PostgreSQL) the latency floor of the durable commits and the floor service's ratios (the
    same goals for the least a durable service does, ``floor_service.py``, and for that least with the service's
    duties), for reference."""
    p50 = {k: stats(p.latencies)["p50"] for k, p in
           (("bs", bare_seq), ("bc", bare_conc), ("ss", svc_seq), ("sc", svc_conc))}
    rate = svc_conc.rate / bare_conc.rate
    seq_ratio, conc_ratio = p50["ss"] / p50["bs"], p50["sc"] / p50["bc"]
    n = len(svc_conc.starts)
    out: list[dict[str, Any]] = [
        {"goal": f"throughput ≥ ⅓ of bare Celery's ({n} at once)",
         "value": f"{rate:.2f}×", "ratio": rate, "met": rate >= THROUGHPUT_GOAL},
        {"goal": f"latency ≤ {LATENCY_GOAL:.0f}× bare, one at a time (p50)",
         "value": f"{seq_ratio:.2f}×", "ratio": seq_ratio, "met": seq_ratio <= LATENCY_GOAL},
        {"goal": f"(reference) latency, service ÷ bare, {n} at once (p50)",
         "value": f"{conc_ratio:.2f}×", "ratio": conc_ratio, "met": None},
        {"goal": f"(reference) service jobs/s, {n} at once",
         "value": f"{svc_conc.rate:.1f} jobs/s", "ratio": svc_conc.rate, "met": None},
    ]
    if commits is not None:
        floor = COMMITS_BEFORE_FINISHED * commits.durable_commit
        each = 1000 * commits.durable_commit
        out.append({"goal": f"(floor) {COMMITS_BEFORE_FINISHED} durable commits ({each:.1f} ms p50 each) ÷ bare p50",
                    "value": f"{floor / p50['bs']:.2f}×", "ratio": floor / p50["bs"], "met": None})
    if floor_seq is not None and floor_conc is not None:
        out += _both_goals("floor service", floor_seq, floor_conc, bare_conc, p50["bs"])
    if floor_no_flush is not None:
        ratio = stats(floor_no_flush.latencies)["p50"] / p50["bs"]
        out.append({"goal": "(floor service, commits not flushed) latency ÷ bare, one at a time",
                    "value": f"{ratio:.2f}×", "ratio": ratio, "met": None})
    if duties_seq is not None and duties_conc is not None:
        out += _both_goals("floor + duties", duties_seq, duties_conc, bare_conc, p50["bs"])
    return out


def at_duties_cost(rate: float, service: dict[str, float], duties: dict[str, float]) -> list[dict[str, Any]]:
    """The service's throughput ratio (``rate``) if its API process, then its API and workers, cost a job what the
    floor with duties does (CPU tables of both, all at once): the rate scaled by the whole CPU a job takes (busy,
    others and idle held as in the run). What a rewrite of each hot path into the floor's shape could reach."""
    whole = service["all of the above"] + service["other processes on the machine"] + service["idle"]
    api = whole - service["API processes"] + duties["API processes"]
    both = api - service["worker processes"] + duties["worker processes"]
    return [{"goal": f"(service, its {part} at the duties floor's CPU) throughput ÷ bare", "value": f"{value:.2f}×",
             "ratio": value, "met": None}
            for part, value in (("API", rate * whole / api), ("API and workers", rate * whole / both))]


def _both_goals(name: str, seq: Phase, conc: Phase, bare_conc: Phase, bare_p50: float) -> list[dict[str, Any]]:
    """A reference service's throughput and one-at-a-time latency as ratios to bare Celery's, for reference."""
    rate, seq_ratio = conc.rate / bare_conc.rate, stats(seq.latencies)["p50"] / bare_p50
    return [{"goal": f"({name}) throughput ÷ bare ({len(conc.starts)} at once; goal ⅓)", "value": f"{rate:.2f}×",
             "ratio": rate, "met": None},
            {"goal": f"({name}) latency ÷ bare, one at a time (goal {LATENCY_GOAL:.0f}×)",
             "value": f"{seq_ratio:.2f}×", "ratio": seq_ratio, "met": None}]


def jsonable(value: Any) -> Any:
    """Floats that JSON can carry (NaN → null), dataclasses as objects, recursively."""
    if isinstance(value, float):
        return None if value != value else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def per_task(calls: Counter, n: int) -> dict[str, Any]:
    by_command = {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}
    return {"total": sum(v for v in calls.values() if v > 0) / n, "by_command": by_command}
