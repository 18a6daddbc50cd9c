"""Issue 12's acceptance comparison, through the service: the demo model on exact, aer, aer:fake_melbourne and
braket:local_dm, compared with exact.

Two comparisons on the demo's grid (``qkan-orch demo``'s model and inputs, ``cli.demo.demo_model``), at
``--shots`` per circuit: one without mitigation, one with read-out correction and zero-noise extrapolation on
the noisy backends. Expected: the ideal simulator's χ² p-value is not tiny (> 0.001: its shot errors explain
its differences) and the noisy ones' unmitigated are (< 0.001); with readout+zne the noisy ones' slope of
outputs on exact is in [0.96, 1.04]. Prints one row per backend and run, and whether each expectation held.
A statistical run of minutes, so not a test (tests/test_comparisons.py checks the machinery). Run it with::

    nice -n 10 .venv/bin/python bench/comparison_acceptance.py     # about 3 minutes on 2 cores
"""

import argparse
import sys
import tempfile
from pathlib import Path

from compile_and_run import log

from qkan_orch.cli.demo import DEMO_FUNCTION, demo_model
from qkan_orch.client import Client, Comparison
from qkan_orch.models import save_model
from qkan_orch.models.functions import get_function
from qkan_orch.service.local import LocalService

IDEAL, NOISY = ["aer"], ["aer:fake_melbourne", "braket:local_dm"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=8, help="grid points per axis (default: 8)")
    parser.add_argument("--shots", type=int, default=20_000, help="shots per circuit (default: 20000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the seedable backends (default: 1)")
    return parser.parse_args(argv)


def rows(done: Comparison, run: str) -> list[tuple[str, str, float, float, float | None]]:
    out = []
    for c in done.backends:
        for label, found in ((run, c.agreement), (f"{run} (raw)", c.raw_agreement)):
            if found is not None:
                out.append((c.backend, label, found.p_value, found.rmse, found.slope))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = get_function(DEMO_FUNCTION).grid(args.grid).numpy()
    with tempfile.TemporaryDirectory() as tmp, LocalService(Path(tmp), {"QKAN_LOG_LEVEL": "WARNING"}) as svc, \
            Client(svc.url, svc.create_key("bench")) as qc:
        log("[comparison] training the demo model ...")
        model, _ = demo_model()
        save_model(model, str(Path(tmp) / "demo.safetensors"))
        model_id = qc.upload_model(Path(tmp) / "demo.safetensors").id
        seeded = {"aer": {"seed": args.seed}, "aer:fake_melbourne": {"seed": args.seed}}
        log(f"[comparison] {len(inputs)} samples at {args.shots} shots: no mitigation ...")
        plain = qc.wait_comparison(qc.compare(model_id, inputs, IDEAL + NOISY, shots=args.shots,
                                              mitigation="none", options=seeded).id)
        log("[comparison] readout+zne on the noisy backends ...")
        fixed = qc.wait_comparison(qc.compare(model_id, inputs, NOISY, shots=args.shots, mitigation="readout+zne",
                                              options={b: o for b, o in seeded.items() if b in NOISY}).id)
    table = rows(plain, "none") + rows(fixed, "readout+zne")
    print(f"\n{'backend':<22} {'run':<18} {'χ² p':>9} {'RMSE':>8} {'slope':>7}")
    for backend, run, p, rmse, slope in table:
        print(f"{backend:<22} {run:<18} {p:9.3g} {rmse:8.4f} {slope if slope is not None else float('nan'):7.4f}")
    by = {(b, r): (p, s) for b, r, p, _, s in table}
    checks = {"ideal p > 0.001": all(by[(b, "none")][0] > 1e-3 for b in IDEAL),
              "noisy unmitigated p < 0.001": all(by[(b, "none")][0] < 1e-3 for b in NOISY),
              "readout+zne slope in [0.96, 1.04]": all(0.96 <= (by[(b, "readout+zne")][1] or 0) <= 1.04
                                                       for b in NOISY)}
    for name, held in checks.items():
        print(f"{'held' if held else 'FAILED':>6}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
