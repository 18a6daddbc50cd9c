"""``qkan-orch serve | worker | keys | models | submit | status | result | cancel``."""

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from qkan_orch.cli.arrays import MITIGATION_HELP, pack_arg, parse_mitigation, parse_options, read_array, write_array
from qkan_orch.models.errors import InputError
from qkan_orch.service.store.states import JobState

if TYPE_CHECKING:
    from qkan_orch.client import Client, Job, Model


def serve(args: argparse.Namespace) -> int:
    """The API in the foreground; without QKAN_REDIS_URL also an embedded Redis and one worker beside it, both
    restarted when they die. A second serve on the same data folder exits with a one-line error."""
    import logging
    import os

    from qkan_orch.service.data_folder import FolderInUse
    from qkan_orch.service.local import LocalService
    from qkan_orch.service.settings import get_settings

    settings = get_settings()
    service = LocalService(settings.data_dir, {k: v for k, v in os.environ.items() if k.startswith("QKAN_")},
                           concurrency=args.worker_concurrency)
    try:
        service.claim_data_dir()
    except FolderInUse as exc:
        print(f"qkan-orch: error: {exc}", file=sys.stderr)
        return 1
    supervision = logging.getLogger("qkan.serve")  # restarts of the children, on serve's own stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    supervision.addHandler(handler)
    supervision.setLevel(logging.INFO)
    embedded = not settings.redis_url
    if embedded:
        print(f"embedded mode: data in {settings.data_dir.resolve()} (SQLite, Redis, worker.log)", file=sys.stderr)
    host, port = args.host or settings.api_host, args.port or settings.api_port
    print(f"QKAN Orchestrator API on http://{host}:{port}  (docs: /docs)", file=sys.stderr)
    service.serve_forever(host, port, workers=1 if embedded else 0)
    return 0


def worker(args: argparse.Namespace) -> int:
    from qkan_orch.service.settings import get_settings
    from qkan_orch.workers.app import celery_app

    settings = get_settings()
    app = celery_app(settings)
    import qkan_orch.workers.tasks  # noqa: F401  (registers the tasks)

    argv = ["worker", "-Q", args.queues, "--loglevel", settings.log_level, "--without-mingle", "--without-gossip",
            "-n", f"qkan-{args.queues.replace(',', '-')}@%h"]
    concurrency = args.concurrency or settings.worker_concurrency
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if args.include:
        argv += ["--include", args.include]
    app.worker_main(argv)
    return 0


def keys(args: argparse.Namespace) -> int:
    """The database ``serve`` run from the same place uses (QKAN_DATA_DIR, QKAN_DATABASE_URL); refused when
    the data folder does not exist, rather than creating a database no running service reads."""
    from qkan_orch.service.settings import get_settings
    from qkan_orch.service.store.database import session_scope, upgrade
    from qkan_orch.service.store.keys import KeyRevoked, create_key, list_keys, revoke_key, rotate_key

    settings = get_settings()
    folder = settings.data_dir.resolve()
    if settings.database_url is None and not folder.is_dir():  # never a fresh database no service reads
        raise InputError("QKAN_DATA_DIR", f"no data folder at {folder}; set QKAN_DATA_DIR to the folder "
                                          "'qkan-orch serve' printed, or run this where serve runs")
    if args.action in ("revoke", "rotate") and args.id is None:
        raise InputError("id", f"give the id of the key to {args.action} ('qkan-orch keys list' shows them)")
    where = "QKAN_DATABASE_URL's database" if settings.database_url else str(folder)
    url = settings.resolved_database_url
    upgrade(url)
    with session_scope(url) as session:
        if args.action == "create":
            for flag, value in (("--max-shots", args.max_shots), ("--max-cost", args.max_cost)):
                if value is not None and value < 0:
                    raise InputError(flag, f"must not be negative, got {value}")
            for flag, value in (("--rate-limit", args.rate_limit), ("--max-active-jobs", args.max_active_jobs)):
                if value is not None and value <= 0:
                    raise InputError(flag, f"must be positive, got {value}")
            key, token = create_key(session, args.name, max_shots=args.max_shots, max_cost=args.max_cost,
                                    admin=args.admin, rate_limit=args.rate_limit,
                                    max_active_jobs=args.max_active_jobs)
            print(token)
            print(f"key {key.id} ('{key.name}') created in {where}; the token above is shown only once",
                  file=sys.stderr)
        elif args.action == "revoke":
            if revoke_key(session, args.id) is None:
                raise InputError("id", f"no key {args.id} in {where}")
            print(f"key {args.id} revoked: running API processes refuse it within QKAN_KEY_CACHE_SECONDS "
                  f"({settings.key_cache_seconds:g} s)", file=sys.stderr)
        elif args.action == "rotate":
            try:
                rotated = rotate_key(session, args.id)
            except KeyRevoked as exc:
                raise InputError("id", str(exc)) from None
            if rotated is None:
                raise InputError("id", f"no key {args.id} in {where}")
            print(rotated[1])
            print(f"key {args.id} has the new token above (shown only once); running API processes refuse the old "
                  f"one within QKAN_KEY_CACHE_SECONDS ({settings.key_cache_seconds:g} s)", file=sys.stderr)
        else:
            for key in list_keys(session):
                budget = f"shots≤{key.max_shots}" if key.max_shots is not None else "shots unlimited"
                budget += f", cost≤${key.max_cost:g}" if key.max_cost is not None else ", cost unlimited"
                limits = f"{key.rate_limit:g}/s" if key.rate_limit is not None else "default rate"
                limits += f", active≤{key.max_active_jobs}" if key.max_active_jobs is not None else ", default active"
                role = "admin" if key.admin else "user"
                if key.revoked_at is not None:
                    role += f", revoked {key.revoked_at:%Y-%m-%d %H:%M}"
                print(f"{key.id}\t{key.prefix}…\t{key.name}\t{role}\t{key.created_at:%Y-%m-%d %H:%M}\t{budget}"
                      f"\t{limits}")
    return 0


def _client(args: argparse.Namespace) -> "Client":
    from qkan_orch.client import Client

    return Client(args.url, args.api_key)


def models_cmd(args: argparse.Namespace) -> int:
    with _client(args) as qc:
        if args.action == "upload":
            if not args.file:
                raise InputError("file", "give the model file to upload")
            model = qc.upload_model(args.file, args.spec, args.name)
            if args.json:
                _print(model)
            else:
                print(model.id)
        elif args.action == "delete":
            qc.delete_model(args.id)
        elif args.id:
            _print(qc.model(args.id))
        else:
            for m in qc.models(limit=500).items:
                print(f"{m.id}  {m.name:<24} {m.spec.get('kind')} {m.parameter_count:>6} params")
    return 0


def submit(args: argparse.Namespace) -> int:
    options = parse_options(args.options) or None
    if args.dry_run:
        return _quote(args, options)
    if not args.inputs:
        raise InputError("inputs", "give --inputs FILE (.npy or .csv)")
    with _client(args) as qc:  # the file is uploaded as is; the service parses and checks it
        job = qc.submit(args.model, Path(args.inputs), args.backend, args.shots, args.pack, options,
                        args.idempotency_key, parse_mitigation(args.mitigation))
        print(job.id)
        estimate = job.estimate
        if estimate and estimate.executions and not args.quiet:
            print(f"estimate: at most {estimate.executions:,} circuit executions, {estimate.shots:,} shots, "
                  f"{estimate.tasks} provider jobs, USD {estimate.cost:,.2f}", file=sys.stderr)
        if args.wait:
            status = qc.wait(job.id, progress=not args.quiet)
            print(status.state, file=sys.stderr)
            return 0 if status.state == JobState.SUCCEEDED else 1
    return 0


def _quote(args: argparse.Namespace, options: dict | None) -> int:
    """``submit --dry-run``: the quote of the submission (inputs counted here, not sent); nothing is stored."""
    if args.samples is not None:
        samples = args.samples
    elif args.inputs:
        samples = len(read_array(args.inputs))
    else:
        raise InputError("inputs", "give --inputs FILE or --samples N to quote")
    with _client(args) as qc:
        q = qc.estimate(args.model, samples, args.backend, args.shots, args.pack, options,
                        parse_mitigation(args.mitigation))
    if args.json:
        print(json.dumps(asdict(q), indent=2))
        return 0
    e = q.estimate
    shots = f"{q.shots:,} shots per circuit" if q.shots else "no shots (exact probabilities)"
    print(f"{q.backend}: {q.samples:,} samples, {q.rounds} rounds, {q.circuits:,} edge circuits, "
          f"{q.width} per circuit, {shots}, mitigation {q.mitigation.get('method', 'none')}")
    print(f"at most {e.executions:,} circuit executions, {e.shots:,} shots, {e.tasks:,} provider jobs, "
          f"{e.qpu_seconds:,.1f} QPU s: USD {e.cost:,.2f} ({q.price.get('source', '')})")
    for assumption in q.assumptions:
        print(f"assumes: {assumption}")
    if not q.within_budget:
        print(f"over budget: {q.budget_message}")
    return 0


def status(args: argparse.Namespace) -> int:
    with _client(args) as qc:
        _print(qc.status(args.job))
    return 0


def wait(args: argparse.Namespace) -> int:
    """Any job (inference, training, a comparison's) to its end, so a script can chain on the exit status."""
    with _client(args) as qc:
        final = qc.wait(args.job, progress=not args.quiet)
    print(final.state, file=sys.stderr)
    if final.error:
        print(f"error: {final.error.code}: {final.error.message}", file=sys.stderr)
    return 0 if final.state == JobState.SUCCEEDED else 1


def result(args: argparse.Namespace) -> int:
    import numpy as np

    with _client(args) as qc:
        body = qc.job_result(args.job)
    outputs, stderr = np.asarray(body.outputs), np.asarray(body.stderr)
    if args.raw_out:  # before mitigation; without mitigation that is the output itself
        write_array(args.raw_out, np.asarray(body.raw_outputs if body.raw_outputs is not None else outputs),
                    field="raw-out")
    if args.out:
        write_array(args.out, outputs)
        if args.stderr_out:
            write_array(args.stderr_out, stderr, field="stderr-out")
    else:
        for value, error in zip(outputs.tolist(), stderr.tolist(), strict=True):
            print(" ".join(f"{v:.6g}±{e:.2g}" for v, e in zip(value, error, strict=True)))
    return 0


def cancel(args: argparse.Namespace) -> int:
    """``cancelled`` once the job has ended; until then ``cancel requested`` (a worker stops it after its step)."""
    with _client(args) as qc:
        job = qc.cancel(args.job)
    print(job.state if job.state.terminal else "cancel requested")
    return 0


def _print(record: "Job | Model") -> None:
    """A client record as the JSON the API sent: states as their strings, timestamps in ISO 8601 (UTC)."""
    print(json.dumps(asdict(record), indent=2, default=datetime.isoformat))


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the API (and, without QKAN_REDIS_URL, an embedded Redis and a worker, "
                                     "restarted when they die)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--worker-concurrency", type=int, help="processes of the embedded worker")
    s.set_defaults(handler=serve)

    w = sub.add_parser("worker", help="run a Celery worker on the configured broker")
    w.add_argument("--queues", default="local,ibm,braket", help="comma-separated: local, ibm, braket")
    w.add_argument("--concurrency", type=int)
    w.add_argument("--include", metavar="MODULE[,MODULE]",
                   help="extra task modules to import (importable from PYTHONPATH), e.g. a benchmark's own tasks")
    w.set_defaults(handler=worker)

    k = sub.add_parser("keys", help="create, list, revoke or rotate API keys (writes to the database directly)")
    k.add_argument("action", choices=["create", "list", "revoke", "rotate"])
    k.add_argument("id", nargs="?", type=int, help="revoke, rotate: the key's id (keys list shows it)")
    k.add_argument("--name", default="default")
    k.add_argument("--max-shots", type=int, help="budget: shots over all of the key's jobs")
    k.add_argument("--max-cost", type=float, help="budget: estimated USD over all of the key's jobs")
    k.add_argument("--admin", action="store_true", help="its dashboard shows every key's queues and jobs; it may "
                   "revoke and rotate keys through the API")
    k.add_argument("--rate-limit", type=float, help="requests per second (bursts of twice that); default "
                   "QKAN_RATE_LIMIT_PER_SECOND")
    k.add_argument("--max-active-jobs", type=int, help="jobs queued or running at once; default "
                   "QKAN_MAX_ACTIVE_JOBS_PER_KEY")
    k.set_defaults(handler=keys)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="API base URL (default $QKAN_URL or http://127.0.0.1:8000)")
        p.add_argument("--api-key", help="default $QKAN_API_KEY")

    m = sub.add_parser("models", help="list, show, upload or delete models on the service")
    m.add_argument("action", nargs="?", default="list", choices=["list", "show", "upload", "delete"])
    m.add_argument("--id")
    m.add_argument("--file")
    m.add_argument("--spec")
    m.add_argument("--name")
    m.add_argument("--json", action="store_true", help="upload: print the full record, not the id alone")
    client_flags(m)
    m.set_defaults(handler=models_cmd)

    j = sub.add_parser("submit", help="submit an inference job; prints its id")
    j.add_argument("--model", required=True, help="model id on the service")
    j.add_argument("--inputs", help=".npy or .csv")
    j.add_argument("--backend", default="exact")
    j.add_argument("--shots", type=int)
    j.add_argument("--pack", type=pack_arg, help="template copies per circuit, or auto (from calibration)")
    j.add_argument("--options", help="backend options as JSON")
    j.add_argument("--mitigation", help=MITIGATION_HELP)
    j.add_argument("--idempotency-key")
    j.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    j.add_argument("--quiet", action="store_true")
    j.add_argument("--dry-run", action="store_true",
                   help="quote it instead: executions, shots, tasks, QPU seconds, USD (hardware: no account needed)")
    j.add_argument("--samples", type=int, help="--dry-run without an inputs file: the number of samples")
    j.add_argument("--json", action="store_true", help="--dry-run: the quote as JSON")
    client_flags(j)
    j.set_defaults(handler=submit)

    for name, handler, text in (("status", status, "a job's state and progress"),
                                ("cancel", cancel, "cancel a job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
        client_flags(p)
        p.set_defaults(handler=handler)
    w = sub.add_parser("wait", help="wait for a job to end, with a progress bar; exit status 1 unless it succeeded")
    w.add_argument("job")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    client_flags(w)
    w.set_defaults(handler=wait)

    r = sub.add_parser("result", help="a job's outputs (± standard errors), or write them to files")
    r.add_argument("job")
    r.add_argument("--out", help=".npy or .csv")
    r.add_argument("--stderr-out")
    r.add_argument("--raw-out", help="outputs before mitigation, .npy or .csv")
    client_flags(r)
    r.set_defaults(handler=result)
