"""How long ``qkan-orch`` takes to start for commands that only talk to the service.

Runs each command N times in a fresh process and prints the median wall time
in seconds and as a multiple of ``python -c pass`` (the interpreter's own
start-up). The commands: ``status --help`` (parsing only) and ``status JOB``
against a port nothing listens on (parsing, the client, one refused
connection). The target is ``status`` under 0.5 s; before the CLI imported
torch, Qiskit and the SDKs lazily it took about 3 s. Also ``backends``, cold
(a fresh cache folder: every SDK is asked, once) and then from its cache
file (the target: well under a second). Not a test and not run by CI. Run
it with::

    .venv/bin/python bench/cli_startup.py              # 15 runs each, a few seconds
    .venv/bin/python bench/cli_startup.py --runs 40

Timings on a shared 2-core machine move with whatever else runs: the header
prints the CPU count and load so runs can be compared.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    return parser.parse_args(argv)


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median_seconds(command: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of ``command`` in a fresh process; its exit code is not checked (status fails by design)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli = shutil.which("qkan-orch", path=os.path.dirname(sys.executable)) or "qkan-orch"
    url = f"http://127.0.0.1:{closed_port()}"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "qkan-orch status --help": [cli, "status", "--help"],
        "qkan-orch status JOB (closed port)": [cli, "status", "JOB", "--url", url],
    }
    print(f"# {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.runs} runs each, median wall time")
    results = {name: median_seconds(command, args.runs) for name, command in commands.items()}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        results["qkan-orch backends (cold)"] = median_seconds([cli, "backends"], 1, env)
        results["qkan-orch backends (cached)"] = median_seconds([cli, "backends"], args.runs, env)
    baseline = results["python -c pass"]
    for name, seconds in results.items():
        print(f"{name:<36} {seconds:7.3f} s  {seconds / baseline:5.1f}× python -c pass")
    print(json.dumps({"runs": args.runs, "seconds": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
