"""The worker side of a job, run in the benchmark's own process: metered, then under cProfile."""

import cProfile
import os
import pstats
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from load_instruments import SqlMeter
from load_phases import all_jobs
from load_report import log, stats

from qkan_orch.client import Client
from qkan_orch.service.local import LocalService
from qkan_orch.service.processes import stop_group
from qkan_orch.workers.step import advance_job

REPO = Path(__file__).resolve().parent.parent


def profile_worker_path(service: LocalService, qc: Client, meter: SqlMeter, model_id: str,
                        inputs: list[np.ndarray], jobs: int) -> dict[str, Any]:
    """Run ``advance_job`` in this process on fresh jobs: once metered, once under cProfile.

    The worker is stopped first, and the supervisor before it (it would start the
    worker again within a second, which would then run the jobs timed here), so
    the jobs' messages stay in Redis and the only code touching them is the call
    timed here (no queueing, no contention: the unloaded cost of the worker side
    of one job). This is the bench's last phase: nothing needs the workers after.
    """
    service.supervisor.stop()
    for process in service.workers:
        stop_group(process)
    settings = service.settings
    ids = [qc.submit(model_id, inputs[k % len(inputs)], backend="exact").id for k in range(2 + 2 * jobs)]
    for job_id in ids[:2]:  # the model cache and the backend import are per process: not per job
        advance_job(job_id, settings)
    walls = []
    with meter.measure() as counts:
        for job_id in ids[2:2 + jobs]:
            start = time.perf_counter()
            step = advance_job(job_id, settings)
            walls.append(time.perf_counter() - start)
            if step.again_in is not None:
                log(f"  (job {job_id} wants another step in {step.again_in} s)")
    profiler = cProfile.Profile()
    profiler.enable()
    for job_id in ids[2 + jobs:]:
        advance_job(job_id, settings)
    profiler.disable()
    wanted = set(ids)
    states = Counter(str(j.state) for j in all_jobs(qc).values() if j.id in wanted)
    return {"jobs": jobs, "wall_s": stats(walls), "sql": counts.per(jobs), "states": dict(states),
            "cprofile": top_functions(profiler, jobs)}


def top_functions(profiler: cProfile.Profile, jobs: int, limit: int = 14) -> dict[str, Any]:
    """Self time per job by package (where the CPU goes), and this repo's functions by cumulative time."""
    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_package: dict[str, float] = defaultdict(float)
    ours = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in raw.items():
        by_package[package_of(filename, name)] += 1000 * own / jobs
        if filename.startswith(str(REPO)) and ".venv" not in filename:
            ours.append({"function": f"{os.path.relpath(filename, REPO)}:{line}({name})",
                         "ms_per_job": 1000 * cumulative / jobs, "calls_per_job": calls / jobs})
    ours.sort(key=lambda r: -r["ms_per_job"])
    packages = dict(sorted(by_package.items(), key=lambda kv: -kv[1]))
    return {"self_ms_by_package": packages, "repo_functions": ours[:limit]}


def package_of(filename: str, name: str) -> str:
    """Which package a profiled function belongs to: site-packages' top folder, our top folder, or stdlib."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(str(REPO)):
        return "ours: " + os.path.relpath(filename, REPO).split("/", 1)[0]
    if filename == "~":  # a C function: name it by the type it is a method of
        match = re.search(r"of '([\w.]+)", name)
        return f"C: {match.group(1).split('.')[0]}" if match else "C: builtins"
    return "stdlib"
