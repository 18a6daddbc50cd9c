"""Sequence data for the QKAN-LSTM models (issue 13, item 2): built-in series cut into next-value windows, a
split by time, user CSV windows, and ``qkan-orch train`` of a sequence model end to end."""

from pathlib import Path

import numpy as np
import pytest
from scipy import special

from qkan_orch.cli.arrays import read_array
from qkan_orch.models import InputError, SequenceModel, load_model
from qkan_orch.models.sequences import SERIES, get_series, split_by_time, windows, windows_from_table
from support.cli_process import cli


@pytest.mark.parametrize("name", sorted(SERIES))
def test_each_target_is_the_value_after_its_window(name: str) -> None:
    series = get_series(name)(40)
    x, y = windows(series, 6)
    assert x.shape == (34, 6, 1) and y.shape == (34, 1)
    starts = np.arange(34)[:, None] + np.arange(6)
    np.testing.assert_array_equal(x[:, :, 0], series[starts])
    np.testing.assert_array_equal(y[:, 0], series[6:])
    assert np.abs(series).max() <= 1.0


def test_a_longer_horizon_skips_ahead() -> None:
    series = np.arange(10.0)
    x, y = windows(series, 3, horizon=2)
    assert x.shape == (6, 3, 1)
    np.testing.assert_array_equal(y[:, 0] - x[:, -1, 0], np.full(6, 2.0))


def test_the_series_are_the_named_functions() -> None:
    t = SERIES["damped_shm"].step * np.arange(50)
    np.testing.assert_allclose(SERIES["damped_shm"](50), np.exp(-0.02 * t) * np.cos(t))
    xs = SERIES["bessel_j0"].step * np.arange(50)
    np.testing.assert_allclose(SERIES["bessel_j0"](50), special.j0(xs))
    np.testing.assert_allclose(SERIES["bessel_j1"](50), special.j1(xs))


def test_split_is_by_time() -> None:
    x, y = windows(np.arange(26.0), 6)
    x_train, y_train, x_test, y_test = split_by_time(x, y, 0.25)
    assert len(x_train) == 15 and len(x_test) == 5
    np.testing.assert_array_equal(np.concatenate([y_train, y_test]), y)  # order kept, nothing lost or shuffled
    assert y_train.max() < y_test.min()


def test_csv_windows_round_trip(tmp_path: Path) -> None:
    x, y = windows(get_series("bessel_j1")(30), 5)
    path = tmp_path / "windows.csv"
    np.savetxt(path, np.hstack([x[:, :, 0], y]), delimiter=",", fmt="%.17g",
               header="x1,x2,x3,x4,x5,target", comments="")
    x_read, y_read = windows_from_table(read_array(str(path), field="data"))
    np.testing.assert_array_equal(x_read, x)
    np.testing.assert_array_equal(y_read, y)


@pytest.mark.parametrize(("call", "field", "words"), [
    (lambda: windows(np.arange(5.0), 5), "window", "at least 6 values"),
    (lambda: windows(np.arange(5.0), 0), "window", "≥ 1"),
    (lambda: windows_from_table(np.zeros((0, 0))), "data", "no rows"),
    (lambda: windows_from_table(np.zeros((4, 1))), "data", "1 column"),
    (lambda: windows_from_table(np.array([[0.1, 0.2], [0.3, np.nan]])), "data", "row 2, column 2 is nan"),
    (lambda: split_by_time(np.zeros((1, 3, 1)), np.zeros((1, 1))), "samples", "none for training"),
    (lambda: get_series("sin"), "function", "not a built-in sequence"),
])
def test_bad_inputs_name_their_field(call, field: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        call()
    assert caught.value.field == field and words in caught.value.message


def test_train_a_qkan_lstm_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    done = cli("train", "--model", "qkan-lstm", "--function", "damped_shm", "--window", "6", "--hidden", "2",
               "--reps", "1", "--samples", "24", "--steps", "1", "--out", str(out), "--quiet", env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "train MSE" in done.stderr and "test MSE" in done.stderr and "trainable parameters" in done.stderr
    model = load_model(str(out))
    assert isinstance(model, SequenceModel) and model.spec.kind == "qkan-lstm"
    assert (model.spec.window, model.spec.hidden) == (6, 2)

    bad = cli("train", "--model", "qkan-lstm", "--function", "damped_shm", "--window", "0", "--out", str(out),
              env={}, cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--window" in bad.stderr


def test_train_the_lstm_baseline_on_a_users_csv(tmp_path: Path) -> None:
    x, y = windows(get_series("bessel_j0")(40), 5)
    data = tmp_path / "windows.csv"
    np.savetxt(data, np.hstack([x[:, :, 0], y]), delimiter=",")
    out = tmp_path / "m.safetensors"
    wrong = cli("train", "--model", "lstm", "--data", str(data), "--window", "4", "--out", str(out), env={},
                cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "error: window:" in wrong.stderr
    done = cli("train", "--model", "lstm", "--data", str(data), "--optimizer", "adam", "--steps", "3",
               "--out", str(out), "--quiet", env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "on 28 samples" in done.stderr and "on 7 held out" in done.stderr
    model = load_model(str(out))
    assert isinstance(model, SequenceModel) and (model.spec.kind, model.spec.window) == ("lstm", 5)
