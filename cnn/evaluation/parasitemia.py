"""Per patient (or slide): how many of its cells the model calls parasitized, and the
parasitemia that implies once the model's own errors are accounted for (Rogan–Gladen)."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import norm

from cnn.config import DEFAULT_FLAG_PARASITEMIA
from cnn.labels import PARASITIZED

PATIENT_SCHEMA = pa.schema(
    [
        ("group", pa.string()),
        ("cells", pa.int64()),
        ("predicted_parasitized", pa.int64()),
        ("parasitemia", pa.float64()),
        ("parasitemia_low", pa.float64()),
        ("parasitemia_high", pa.float64()),
        ("flagged", pa.bool_()),
    ]
)
"""The per-patient table's columns and types, in this order."""
PATIENT_COLUMNS = tuple(PATIENT_SCHEMA.names)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class ErrorRates:
    """The model's sensitivity and specificity at its operating point (from validation)."""

    sensitivity: float
    specificity: float

    def __post_init__(self) -> None:
        if self.sensitivity + self.specificity <= 1.0:
            raise ValueError(
                f"sensitivity {self.sensitivity:.3f} + specificity {self.specificity:.3f} must "
                "exceed 1 for the positives called to say anything about parasitemia"
            )

    def corrected(self, apparent: np.ndarray) -> np.ndarray:
        """Rogan–Gladen: the true share from the share called positive, clipped to [0, 1]."""
        true_share = (apparent + self.specificity - 1.0) / (
            self.sensitivity + self.specificity - 1.0
        )
        return np.clip(true_share, 0.0, 1.0)


UNCORRECTED = ErrorRates(sensitivity=1.0, specificity=1.0)
"""A model of unknown error rates: the parasitemia is the share it calls parasitized."""


def model_error_rates(metadata: dict | None) -> tuple[ErrorRates, str | None]:
    """The validation sensitivity and specificity a registered model's metadata records, and
    None; or `UNCORRECTED` and why, for models logged without them or too weak to correct."""
    metadata = metadata or {}
    try:
        rates = ErrorRates(
            float(metadata["validation_sensitivity"]), float(metadata["validation_specificity"])
        )
    except KeyError:
        return UNCORRECTED, "the model records no validation error rates: parasitemia uncorrected"
    except ValueError as error:
        return UNCORRECTED, f"{error}: parasitemia uncorrected"
    return rates, None


def wilson_interval(positives: np.ndarray, totals: np.ndarray, confidence: float = CONFIDENCE):
    """Wilson score interval of a binomial share (good coverage near 0, unlike Wald's)."""
    z = norm.ppf(0.5 + confidence / 2)
    share = positives / totals
    centre = (share + z**2 / (2 * totals)) / (1 + z**2 / totals)
    half = z * np.sqrt(share * (1 - share) / totals + z**2 / (4 * totals**2)) / (1 + z**2 / totals)
    return centre - half, centre + half


def patient_table(
    groups: np.ndarray,
    predicted_parasitized: np.ndarray,
    rates: ErrorRates,
    flag_above: float = DEFAULT_FLAG_PARASITEMIA,
) -> pd.DataFrame:
    """One row per group: its cells, those predicted parasitized, the Rogan–Gladen
    parasitemia with its 95% interval (the Wilson interval of the called share, mapped the
    same way; it treats the model's error rates as known), and whether it is above
    `flag_above`."""
    frame = pd.DataFrame({"group": np.asarray(groups, dtype=str), "called": predicted_parasitized})
    counts = frame.groupby("group", sort=True)["called"].agg(["size", "sum"])
    cells = counts["size"].to_numpy(np.int64)
    called = counts["sum"].to_numpy(np.int64)
    low, high = wilson_interval(called, cells)
    parasitemia = rates.corrected(called / cells)
    return pd.DataFrame(
        {
            "group": counts.index.astype(str),
            "cells": cells,
            "predicted_parasitized": called,
            "parasitemia": parasitemia,
            "parasitemia_low": rates.corrected(low),
            "parasitemia_high": rates.corrected(high),
            "flagged": parasitemia > flag_above,
        },
        columns=list(PATIENT_COLUMNS),
    )


def evaluated_patients(
    groups: np.ndarray,
    labels: np.ndarray,
    predicted_parasitized: np.ndarray,
    rates: ErrorRates,
    flag_above: float = DEFAULT_FLAG_PARASITEMIA,
) -> pd.DataFrame:
    """`patient_table` with each group's labelled parasitemia beside the estimate."""
    table = patient_table(groups, predicted_parasitized, rates, flag_above)
    truly = pd.Series(np.asarray(labels) == PARASITIZED).groupby(np.asarray(groups, dtype=str))
    table["labelled_parasitemia"] = truly.mean().reindex(table["group"]).to_numpy()
    return table


def parasitemia_error(table: pd.DataFrame) -> float:
    """The mean absolute difference between estimated and labelled parasitemia over groups."""
    return float(np.mean(np.abs(table["parasitemia"] - table["labelled_parasitemia"])))
