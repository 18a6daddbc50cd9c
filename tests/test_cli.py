"""The ``qkan-orch`` command as users run it: a real subprocess of the installed script."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import qkan
import torch
from scipy.stats import chi2

from conftest import make_inputs, make_model
from qkan_orch.cli.arrays import read_array
from qkan_orch.models import save_model

CLI = str(Path(sys.executable).parent / "qkan-orch")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def train_with_qkan(tmp_path: Path, **kwargs: object) -> tuple[qkan.QKAN, Path, Path]:
    """A model trained by the qkan package itself, saved the way its users save it."""
    model = qkan.QKAN(**kwargs)
    x = torch.rand(128, kwargs["width"][0]) * 2 - 1
    y = (torch.sin(torch.pi * x[:, :1]) * 0.5).repeat(1, kwargs["width"][-1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), tmp_path / "qkan_model.pt")
    (tmp_path / "qkan_kwargs.json").write_text(json.dumps(kwargs))
    return model, tmp_path / "qkan_model.pt", tmp_path / "qkan_kwargs.json"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": [2, 3, 1], "reps": 3, "seed": 0},
        {"width": [3, 4, 2], "reps": 2, "seed": 1, "ansatz": "rpz_encoding", "preact_trainable": True,
         "postact_weight_trainable": True, "ba_trainable": True, "fast_measure": False},
    ],
)
def test_predict_reproduces_qkan_exact_solver_outputs(tmp_path: Path, kwargs: dict) -> None:
    model, weights, spec = train_with_qkan(tmp_path, **kwargs)
    x = make_inputs(64, kwargs["width"][0]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = run("predict", "--model", str(weights), "--spec", str(spec), "--inputs", str(tmp_path / "x.npy"),
               "--backend", "exact", "--out", str(tmp_path / "y.npy"), "--quiet")
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - want)) <= 1e-5


def test_train_then_predict_on_a_sampling_backend_with_csv(tmp_path: Path) -> None:
    trained = run("train", "--function", "sin", "--width", "1,2,1", "--reps", "2", "--steps", "5",
                  "--out", str(tmp_path / "m.safetensors"), "--quiet")
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "x.csv").write_text("x\n" + "\n".join(str(v) for v in np.linspace(-1, 1, 9)) + "\n")
    done = run("predict", "--model", str(tmp_path / "m.safetensors"), "--inputs", str(tmp_path / "x.csv"),
               "--backend", "aer", "--shots", "2000", "--pack", "4", "--options", '{"seed": 3}',
               "--out", str(tmp_path / "y.csv"), "--stderr-out", str(tmp_path / "se.csv"), "--quiet")
    assert done.returncode == 0, done.stderr
    y, se = np.loadtxt(tmp_path / "y.csv", ndmin=2, skiprows=1), np.loadtxt(tmp_path / "se.csv", ndmin=2, skiprows=1)
    assert y.shape == se.shape == (9, 1) and (se > 0).all()
    assert "9 samples on aer" in done.stderr


def test_train_from_csv_then_predict_matches_the_data(tmp_path: Path) -> None:
    x = make_inputs(200, 2, seed=4)
    y = 0.5 * x[:, :1] * x[:, 1:]
    np.savetxt(tmp_path / "data.csv", np.hstack([x, y]), delimiter=",", header="x1,x2,y", comments="")
    trained = run("train", "--csv", str(tmp_path / "data.csv"), "--width", "2,3,1", "--steps", "20",
                  "--out", str(tmp_path / "m.safetensors"), "--quiet")
    assert trained.returncode == 0, trained.stderr
    np.save(tmp_path / "x.npy", x)
    done = run("predict", "--model", str(tmp_path / "m.safetensors"), "--inputs", str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "y.npy"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert np.sqrt(np.mean((np.load(tmp_path / "y.npy") - y) ** 2)) < 0.02  # the fit, through the compiler


def test_train_refuses_a_csv_of_the_wrong_width(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "data.csv", make_inputs(10, 4), delimiter=",")
    done = run("train", "--csv", str(tmp_path / "data.csv"), "--width", "2,1", "--out", str(tmp_path / "m.safetensors"))
    assert done.returncode == 2 and "error: csv: has 4 columns" in done.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_backends_lists_every_local_family(tmp_path: Path) -> None:
    done = run("backends", "--json")
    assert done.returncode == 0, done.stderr
    names = {entry["name"] for entry in json.loads(done.stdout)}
    assert {"exact", "aer", "aer:fake_sherbrooke", "aer:fake_torino", "braket:local", "braket:local_dm",
            "pennylane:default.qubit"} <= names


def test_demo_runs_every_local_backend_and_writes_its_report(tmp_path: Path) -> None:
    # keep it short: a 3×3 grid still repeats each coordinate (45 circuits of 81 activations, every backend and
    # both plots as on the default 8×8); 4×4 took ~5 s more, mostly braket:local_dm's readout+zne circuits
    done = run("demo", "--out", str(tmp_path / "demo"), "--quiet", "--grid", "3", "--shots", "1000")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    entries = {e["backend"]: e for e in report["backends"]}
    assert {"exact", "aer", "aer:fake_sherbrooke", "braket:local", "braket:local_dm",
            "pennylane:default.qubit", "ibm:fake_torino"} <= set(entries)
    for entry in entries.values():
        fields = {"shots", "rows", "requested", "executions", "seconds", "rmse_vs_exact", "max_error_vs_exact"}
        assert fields <= set(entry)
        assert entry["rows"] < entry["requested"]  # the grid's repeated values were deduplicated
    assert entries["exact"]["rmse_vs_exact"] == 0.0
    # one comparison against exact: every other backend's row carries its χ² p-value
    assert report["reference"] == "exact" and report["comparison_id"] and "p_value" not in entries["exact"]
    assert all(0.0 <= e["p_value"] <= 1.0 for name, e in entries.items() if name != "exact")
    for name, entry in entries.items():  # noisy simulators run mitigated, raw RMSE beside the mitigated one
        noisy = name in ("aer:fake_sherbrooke", "aer:fake_melbourne", "braket:local_dm", "ibm:fake_torino")
        assert entry["mitigation"] == ("readout+zne" if noisy else "none")
        assert ("raw_rmse_vs_exact" in entry) == noisy
    assert (tmp_path / "demo" / "predictions.png").stat().st_size > 10_000
    assert (tmp_path / "demo" / "mitigation.png").stat().st_size > 10_000
    assert "braket:local_dm" in done.stdout and "χ² p" in done.stdout.splitlines()[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    model = make_model(width=[2, 3, 1], reps=2).float()
    save_model(model, str(tmp_path / "m.safetensors"))
    np.save(tmp_path / "x.npy", make_inputs(8, 2))
    np.save(tmp_path / "wide.npy", make_inputs(8, 3))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    bad = make_inputs(8, 2)
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 5 + b"garbage")
    (tmp_path / "grouped.json").write_text(json.dumps({"width": [2, 3, 1], "reps": 2, "group": 3}))
    (tmp_path / "spec.json").write_text(json.dumps({"width": [2, 3, 1], "reps": 2}))
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'touch PWNED'\ntR.")
    return tmp_path


BAD = [
    (["--inputs", "wide.npy"], "inputs", "3 columns"),
    (["--inputs", "nan.npy"], "inputs", "NaN"),
    (["--inputs", "empty.npy"], "inputs", "empty"),
    (["--inputs", "objects.npy"], "inputs", "not a readable numeric array"),
    (["--inputs", "missing.npy"], "inputs", "not found"),
    (["--backend", "quantum-magic"], "backend", "unknown backend"),
    (["--backend", "aer", "--shots", "0"], "shots", "positive"),
    (["--backend", "aer", "--shots", "-3"], "shots", "positive"),
    (["--backend", "aer", "--pack", "99"], "pack", "1..24"),
    (["--backend", "aer", "--options", "{not json"], "options", "JSON"),
    (["--model", "corrupt.safetensors", "--spec", "spec.json"], "model", "neither"),
    (["--model", "evil.pt", "--spec", "spec.json"], "model", "objects other than tensors"),
    (["--spec", "grouped.json"], "spec.group", "grouped"),
    (["--out", "y.txt"], "out", ".npy or .csv"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD)
def test_bad_input_gives_one_line_error_and_writes_nothing(
    workdir: Path, change: list[str], field: str, message: str
) -> None:
    args = {"--model": "m.safetensors", "--inputs": "x.npy", "--backend": "exact", "--out": "y.npy"}
    for flag, value in zip(change[::2], change[1::2], strict=True):
        args[flag] = value
    argv = ["predict", "--quiet", *[item for pair in args.items() for item in pair]]
    done = run(*argv, cwd=workdir)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: {field}:" in lines[0] and message in lines[0], lines[0]
    assert not (workdir / "y.npy").exists() and not (workdir / "y.txt").exists()
    assert not (workdir / "PWNED").exists()


def test_usage_errors_are_one_line_too() -> None:
    done = run("predict", "--model")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


BAD_MITIGATION = [
    ("bogus", "mitigation", "one of none, readout, zne, readout+zne"),
    ("{not json", "mitigation", "not valid JSON"),
    ('{"method": "magic"}', "mitigation.method", "one of none, readout"),
    ('{"method": "zne", "scale_factors": [1, 2]}', "mitigation.scale_factors", "odd"),
    ('{"method": "zne", "extrapolation": "cubic"}', "mitigation.extrapolation", "linear, richardson, exponential"),
    ('{"method": "readout", "calibration_shots": 0}', "mitigation.calibration_shots", "1..10000000"),
]


@pytest.mark.parametrize(("value", "field", "message"), BAD_MITIGATION)
def test_a_bad_mitigation_gives_one_line_naming_its_field_and_writes_nothing(
    workdir: Path, value: str, field: str, message: str
) -> None:
    done = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--backend", "aer", "--quiet",
               "--mitigation", value, "--out", "y.npy", "--raw-out", "raw.npy", cwd=workdir)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"error: {field}:" in lines[0] and message in lines[0], lines[0]
    assert not (workdir / "y.npy").exists() and not (workdir / "raw.npy").exists()


def test_mitigation_on_the_exact_backend_is_refused(workdir: Path) -> None:
    done = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--backend", "exact", "--quiet",
               "--mitigation", "readout", "--out", "y.npy", cwd=workdir)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: mitigation:" in lines[0] and "analytic" in lines[0], done.stderr
    assert not (workdir / "y.npy").exists()


def test_predict_with_readout_mitigation_writes_mitigated_and_raw_outputs(workdir: Path) -> None:
    done = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--backend", "braket:local_dm",
               "--shots", "200", "--mitigation", '{"method": "readout", "calibration_shots": 200}', "--quiet",
               "--out", "y.npy", "--raw-out", "raw.csv", "--stderr-out", "se.npy", cwd=workdir)
    assert done.returncode == 0, done.stderr
    raw = np.loadtxt(workdir / "raw.csv", ndmin=2, skiprows=1)  # after the header row y0
    y, se = np.load(workdir / "y.npy"), np.load(workdir / "se.npy")
    assert y.shape == raw.shape == se.shape == (8, 1) and np.isfinite(y).all() and (se > 0).all()
    # braket:local_dm flips 2% of read-outs: the correction from its 200-shot calibration moves the outputs
    assert not np.allclose(y, raw)
    summary = done.stderr.strip().splitlines()[-1]
    assert "8 samples on braket:local_dm (mitigation: readout)" in summary, done.stderr


def test_predict_compare_prints_errors_and_packing_and_csv_has_a_header(workdir: Path) -> None:
    done = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--backend", "aer", "--shots", "4000",
               "--pack", "4", "--options", '{"seed": 2}', "--compare", "exact", "--quiet",
               "--out", "y.csv", "--stderr-out", "se.csv", cwd=workdir)
    assert done.returncode == 0, done.stderr
    summary, compared = done.stderr.strip().splitlines()[-2:]
    assert "8 samples on aer" in summary and ", pack 4 →" in summary, done.stderr
    for path in ("y.csv", "se.csv"):
        assert (workdir / path).read_text().splitlines()[0] == "y0"
    y, se = read_array(str(workdir / "y.csv")), read_array(str(workdir / "se.csv"))  # the header round-trips
    assert y.shape == se.shape == (8, 1)
    exact = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--out", "exact.npy", "--quiet",
                cwd=workdir)
    assert exact.returncode == 0, exact.stderr
    ref = np.load(workdir / "exact.npy")
    *parts, consistency = compared.removeprefix("vs exact: ").split(", ")
    numbers = dict(part.rsplit(" ", 1) for part in parts)
    assert set(numbers) == {"RMSE", "max error", "σ from shots", "slope"}, compared
    mean_z2, p_value, counted = map(float, re.fullmatch(r"mean z² (\S+) \(χ² p (\S+) over (\d+)\)",
                                                         consistency).groups())
    z2 = ((y - ref) / se) ** 2  # exact reports no error: the sampled run's alone
    assert counted == z2.size  # random inputs repeat no value: no two samples share a circuit
    assert mean_z2 == pytest.approx(np.mean(z2), rel=5e-3)
    assert p_value == pytest.approx(chi2.sf(np.sum(z2), z2.size), rel=5e-2, abs=5e-3)
    assert float(numbers["RMSE"]) == pytest.approx(np.sqrt(np.mean((y - ref) ** 2)), rel=1e-3)
    assert float(numbers["max error"]) == pytest.approx(np.max(np.abs(y - ref)), rel=1e-3)
    assert float(numbers["σ from shots"]) == pytest.approx(np.sqrt(np.mean(se**2)), rel=1e-3)
    assert float(numbers["slope"]) == pytest.approx(np.polyfit(ref.ravel(), y.ravel(), 1)[0], rel=1e-3)


def test_predict_names_the_physical_qubits_a_device_simulator_used(workdir: Path) -> None:
    done = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--backend", "aer:fake_manila",
               "--shots", "200", "--pack", "2", "--mitigation", "none", "--quiet", "--out", "y.npy", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert re.search(r", pack 2 on qubits \d+,\d+ →", done.stderr), done.stderr


@pytest.mark.parametrize("backend", ["aer", "exact", "braket:local_dm"])
def test_pack_auto_without_calibration_is_one_line_naming_pack(workdir: Path, backend: str) -> None:
    done = run("predict", "--model", "m.safetensors", "--inputs", "x.npy", "--backend", backend, "--shots", "100",
               "--pack", "auto", "--quiet", "--out", "y.npy", cwd=workdir)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: pack:" in lines[0] and "no calibration" in lines[0], done.stderr
    assert not (workdir / "y.npy").exists()


def test_ignored_qkan_options_are_one_warning_line_and_refused_ones_an_error(tmp_path: Path) -> None:
    kwargs = {"width": [2, 3, 1], "reps": 2, "seed": 0}
    model, weights, spec = train_with_qkan(tmp_path, **kwargs)
    spec.write_text(json.dumps({**kwargs, "solver": "exact", "device": "cpu", "c_dtype": "complex64"}))
    np.save(tmp_path / "x.npy", make_inputs(8, 2).astype(np.float32))
    args = ("predict", "--model", str(weights), "--spec", str(spec), "--inputs", str(tmp_path / "x.npy"),
            "--out", str(tmp_path / "y.npy"), "--quiet")
    done = run(*args)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warned == ["qkan-orch: warning: spec: ignoring qkan options c_dtype, device, seed, solver "
                      "(they do not change the forward pass)"], done.stderr
    with torch.no_grad():
        want = model(torch.from_numpy(np.load(tmp_path / "x.npy"))).numpy()
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - want)) <= 1e-5
    spec.write_text(json.dumps({**kwargs, "device": "cpu", "group": 2}))
    refused = run(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == ["qkan-orch: error: spec.group: grouped θ (group != -1) is not "
                                                   "supported: every edge needs its own circuit"], refused.stderr
