"""Per-patient parasitemia: Rogan–Gladen on known counts, the interval's coverage, the table."""

import numpy as np
import pandas as pd
import pytest

from cnn.evaluation.parasitemia import (
    PATIENT_COLUMNS,
    ErrorRates,
    evaluated_patients,
    parasitemia_error,
    patient_table,
)
from cnn.labels import PARASITIZED, UNINFECTED


def test_rogan_gladen_undoes_known_error_rates():
    rates = ErrorRates(sensitivity=0.9, specificity=0.95)
    # 1,000 cells of which 200 parasitized: 180 found, 40 of 800 uninfected called
    assert rates.corrected(np.array([220 / 1000])) == pytest.approx([0.2])
    # fewer positives called than false alarms expected: no parasitemia, not a negative one
    assert rates.corrected(np.array([0.01])) == pytest.approx([0.0])
    assert rates.corrected(np.array([1.0])) == pytest.approx([1.0])


def test_error_rates_that_say_nothing_are_refused():
    with pytest.raises(ValueError, match="must exceed 1"):
        ErrorRates(sensitivity=0.5, specificity=0.5)


def test_the_table_has_one_typed_row_per_group():
    groups = np.array(["B", "A", "A", "B", "B", "A"])
    called = np.array([True, False, False, True, False, True])
    table = patient_table(groups, called, ErrorRates(1.0, 1.0 - 1e-9), flag_above=0.4)
    assert list(table.columns) == list(PATIENT_COLUMNS)
    assert table["group"].tolist() == ["A", "B"]
    assert table["cells"].tolist() == [3, 3]
    assert table["predicted_parasitized"].tolist() == [1, 2]
    assert table["parasitemia"].to_numpy() == pytest.approx([1 / 3, 2 / 3])
    assert table["flagged"].tolist() == [False, True]
    assert (table["parasitemia_low"] <= table["parasitemia"]).all()
    assert (table["parasitemia"] <= table["parasitemia_high"]).all()
    assert table["cells"].dtype == np.int64 and table["flagged"].dtype == bool
    assert pd.api.types.is_float_dtype(table["parasitemia"])


@pytest.mark.parametrize("true_parasitemia", [0.0, 0.01, 0.1, 0.4])
def test_the_interval_covers_the_true_parasitemia_of_simulated_patients(true_parasitemia):
    """1,000 simulated patients of 300 cells each, scored by a model of known error rates:
    the 95% interval holds the true share in at least 93% of them."""
    rng = np.random.default_rng(7)
    rates = ErrorRates(sensitivity=0.95, specificity=0.97)
    patients, cells = 1000, 300
    infected = rng.random((patients, cells)) < true_parasitemia
    called = np.where(
        infected, rng.random(infected.shape) < 0.95, rng.random(infected.shape) > 0.97
    )
    groups = np.repeat(np.arange(patients).astype(str), cells)
    table = patient_table(groups, called.ravel(), rates)
    truth = infected.mean(axis=1)[np.argsort(np.arange(patients).astype(str))]
    covered = (table["parasitemia_low"] <= truth + 1e-12) & (truth <= table["parasitemia_high"])
    assert covered.mean() >= 0.93
    assert abs(table["parasitemia"].mean() - true_parasitemia) < 0.01


def test_the_evaluation_puts_the_labelled_parasitemia_beside_the_estimate():
    groups = np.array(["A"] * 4 + ["B"] * 4)
    labels = np.array([PARASITIZED, UNINFECTED, UNINFECTED, UNINFECTED] + [UNINFECTED] * 4)
    called = np.array([True, True, False, False] + [False] * 4)
    table = evaluated_patients(groups, labels, called, ErrorRates(1.0, 1.0 - 1e-9))
    assert table["labelled_parasitemia"].tolist() == pytest.approx([0.25, 0.0])
    assert table["parasitemia"].tolist() == pytest.approx([0.5, 0.0])
    assert parasitemia_error(table) == pytest.approx(0.125)
