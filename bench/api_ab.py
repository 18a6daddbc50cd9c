"""A/B of a change to the API: CPU per ``POST /v1/jobs`` of the working tree's API process against a revision's.

The whole bench cannot see a change of under a millisecond (its runs swing by
2 ms a job), so the API is measured here as ``load_ab.py`` measures the
worker's step: both versions at once, alternating. Two ``qkan-orch serve``
processes run on one database and broker — arm A imports the package as it
was at ``--rev`` (extracted with ``git archive``, put first on its
PYTHONPATH), arm B the working tree — and blocks of POSTs from ``--threads``
client threads in this process go to one arm, then the other. Each block's
cost is the serving process's CPU (psutil) divided by its POSTs: HTTP,
authentication, rate limit, validation, the insert, the publish, the answer,
in a process of its own as deployed. No worker runs: the jobs stay queued.

    .venv/bin/python bench/api_ab.py --rev HEAD~1

Both arms run the working tree's migrations, so ``--rev`` must have the same
ones (refused otherwise). PostgreSQL + system Redis, as the load bench.
"""

import argparse
import contextlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import psutil
from service_load import stack_env, tiny_model

from qkan_orch.client import Client
from qkan_orch.service.local import LocalService

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = "service/store/migrations"


@contextlib.contextmanager
def revision_root(rev: str, folder: Path) -> Iterator[Path]:
    """A folder whose ``qkan_orch`` is the repository at ``rev``: put it first on a process's PYTHONPATH."""
    if subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", rev, "--", MIGRATIONS]).returncode != 0:
        raise SystemExit(f"{rev} has other migrations than the working tree: both arms share one database")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    source = folder / "source"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    root = folder / "root"
    root.mkdir()
    (root / "qkan_orch").symlink_to(source)
    yield root


def block(client: Client, model_id: str, inputs: list[np.ndarray], threads: int, api: psutil.Process) -> float:
    """ms of the API process's CPU per POST over one block of submissions."""
    before = api.cpu_times()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda x: client.submit(model_id, x, backend="exact"), inputs))
    after = api.cpu_times()
    return 1000 * (after.user + after.system - before.user - before.system) / len(inputs)


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1.0, 1.0, size=(2, 2)) for _ in range(args.posts)]
    with tempfile.TemporaryDirectory(prefix="qkan-api-ab-") as tmp, stack_env("postgresql", Path(tmp), None) as env, \
            revision_root(args.rev, Path(tmp)) as root:
        service = LocalService(Path(tmp), env, concurrency=1)
        service.start(workers=0, api_thread=False)
        try:
            url_b = service.start_api_processes(1)[0]
            service.env["PYTHONPATH"] = str(root)  # the next API process imports the revision
            url_a = service.start_api_processes(1)[0]
            api_b, api_a = (psutil.Process(p.pid) for p in service.api_processes)
            token = service.create_key("ab", rate_limit=1e6, max_active_jobs=10**7)
            arms = {f"A ({args.rev})": (url_a, api_a), "B (working tree)": (url_b, api_b)}
            clients = {name: Client(url, token) for name, (url, _) in arms.items()}
            model_id = clients["B (working tree)"].upload_model(tiny_model(Path(tmp))).id
            for name, client in clients.items():  # first requests: imports, caches, connections
                block(client, model_id, inputs[:100], args.threads, arms[name][1])
            cpu: dict[str, list[float]] = {name: [] for name in arms}
            for k in range(args.blocks):
                for name in (list(arms) if k % 2 == 0 else list(arms)[::-1]):
                    cpu[name].append(block(clients[name], model_id, inputs[:args.posts], args.threads, arms[name][1]))
                    time.sleep(0.2)  # let the other arm's last work settle
            for client in clients.values():
                client.close()
        finally:
            service.stop()
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD~1", help="the git revision of arm A (default HEAD~1)")
    parser.add_argument("--blocks", type=int, default=12, help="blocks per arm (default 12)")
    parser.add_argument("--posts", type=int, default=200, help="POSTs per block (default 200)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    args = parser.parse_args(argv)
    for name, values in run(args).items():
        error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        print(f"{name:>20}: API CPU per POST mean {statistics.mean(values):.3f} ± {error:.3f} ms (standard error), "
              f"median {statistics.median(values):.3f} ms, {len(values)} blocks of {args.posts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
