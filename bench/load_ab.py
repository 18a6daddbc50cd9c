"""A/B of a change to the worker's step: CPU per step of the working tree against a git revision's functions.

Whole-bench numbers swing 3× on this shared machine between runs of the same
code, so a change is measured here instead: both versions run in one process,
alternating in blocks, on the same database, and each ``advance_job`` is timed
with ``time.thread_time`` (the step's own thread; the lease keeper only wakes
after a third of a lease). Arm A patches the named functions as they were at
``--rev`` (loaded from git) over the live modules; arm B is the working tree.

    .venv/bin/python bench/load_ab.py --rev HEAD~1 service/store/jobs.py:claim
    .venv/bin/python bench/load_ab.py --rev HEAD~1 workers/claimed_job.py:ClaimedJob.succeed \\
        service/store/jobs.py:store_result

A name the old function looks up in its module (``store.change`` …) resolves
in the live modules, so patch every function whose behaviour changed together.
Each job is the load bench's (``service_load.py``): ``exact``, 2 samples, the
tiny model, 2 rounds, one step. PostgreSQL + system Redis; no worker runs, so
only the steps timed here touch the jobs.
"""

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
from service_load import stack_env, tiny_model

from qkan_orch.client import Client
from qkan_orch.service.local import LocalService
from qkan_orch.workers.step import advance_job

REPO = Path(__file__).resolve().parent.parent


def patches(rev: str, specs: list[str]) -> list[tuple[object, str, object, object]]:
    """(owner, attribute, old value, live value) for each ``path.py:Name[.attr]`` in ``specs``."""
    out = []
    for spec in specs:
        path, dotted = spec.split(":")
        name = "qkan_orch." + path.removesuffix(".py").replace("/", ".")
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True,
                                check=True).stdout
        old = types.ModuleType(f"{name}@{rev}")
        exec(compile(source, f"{path}@{rev}", "exec"), old.__dict__)  # our own file, as it was at rev
        old_owner, owner = old, importlib.import_module(name)
        *parents, attribute = dotted.split(".")
        for parent in parents:
            old_owner, owner = getattr(old_owner, parent), getattr(owner, parent)
        out.append((owner, attribute, getattr(old_owner, attribute), getattr(owner, attribute)))
    return out


def arm(changes: list[tuple[object, str, object, object]], old: bool) -> Callable[[], None]:
    """Set every patched attribute to its old (arm A) or live (arm B) value."""
    def apply() -> None:
        for owner, attribute, before, now in changes:
            setattr(owner, attribute, before if old else now)
    return apply


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    changes = patches(args.rev, args.functions)
    arms = {f"A ({args.rev})": arm(changes, True), "B (working tree)": arm(changes, False)}
    rng = np.random.default_rng(0)
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory(prefix="qkan-ab-") as tmp, stack_env("postgresql", Path(tmp), None) as env:
        service = LocalService(Path(tmp), env, concurrency=1)
        service.start(workers=0)
        try:
            settings = service.settings
            with Client(service.url, service.create_key("ab", rate_limit=1e6, max_active_jobs=10**6)) as qc:
                model_id = qc.upload_model(tiny_model(Path(tmp))).id
                jobs = iter([qc.submit(model_id, rng.uniform(-1.0, 1.0, size=(2, 2)), backend="exact").id
                             for _ in range(args.steps * len(arms) + 4)])
            for _ in range(4):  # the model cache and the backend import are per process: not per step
                advance_job(next(jobs), settings)
            for block in range(args.steps // args.block):
                for name in (list(arms) if block % 2 == 0 else list(arms)[::-1]):
                    arms[name]()
                    for _ in range(args.block):
                        start = time.thread_time()
                        step = advance_job(next(jobs), settings)
                        cpu[name].append(1000 * (time.thread_time() - start))
                        if step.again_in is not None:
                            raise SystemExit(f"a step did not end its job: {step}")
            arms["B (working tree)"]()
        finally:
            service.stop()
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("functions", nargs="+", help="path.py:Name[.attr] of each function to take from --rev")
    parser.add_argument("--rev", default="HEAD~1", help="the git revision of arm A (default HEAD~1)")
    parser.add_argument("--steps", type=int, default=300, help="steps per arm (default 300)")
    parser.add_argument("--block", type=int, default=20, help="steps in a row per arm (default 20)")
    args = parser.parse_args(argv)
    for name, values in run(args).items():
        print(f"{name:>20}: CPU per step mean {statistics.mean(values):.2f} ms, "
              f"median {statistics.median(values):.2f} ms, n {len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
