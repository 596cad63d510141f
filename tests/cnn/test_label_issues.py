"""Label issues: cleanlab flags flipped labels, folds are patient-grouped, the dataset without
the flagged cells leaves out exactly those (never a test cell), and says so."""

import numpy as np
import pandas as pd
import pytest

from cnn.config import IngestConfig, LabelIssuesConfig, TrainConfig
from cnn.curation.derived import dataset_column
from cnn.curation.exclusion import (
    EXCLUDED_FIELD,
    LabelReviewMissingError,
    without_label_issues,
)
from cnn.curation.folds import FoldError, assign_folds, fold_splits, label_pool
from cnn.curation.issues import (
    ReviewSummary,
    class_probabilities,
    current_review,
    flag_label_issues,
    read_review,
    review_labels,
    review_location,
    review_table,
    write_review,
)
from cnn.data.dataset import images_at, load_split, open_dataset
from cnn.ingest.build import build_dataset
from cnn.io.storage import location
from cnn.labels import PARASITIZED, UNINFECTED
from cnn.reports.figures import label_issue_gallery
from cnn.sources.specs import SyntheticSource


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = IngestConfig(source="synthetic", image_size=16, limit=200)
    built, _ = build_dataset(SyntheticSource(count=200), config, tmp_path_factory.mktemp("ds"))
    return built


def noisy_scores(count: int, flip_share: float, seed: int = 0):
    """True labels, given labels with `flip_share` of them flipped, and a good model's
    P(parasitized) for the true labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, count)
    sure = rng.beta(12, 2, count)  # the model's confidence in the true class
    parasitized = np.where(truth == PARASITIZED, sure, 1 - sure)
    given = truth.copy()
    flipped = rng.choice(count, int(flip_share * count), replace=False)
    given[flipped] = 1 - given[flipped]
    return given, parasitized, np.isin(np.arange(count), flipped)


def test_class_probabilities_follow_the_label_order():
    columns = class_probabilities(np.array([0.9, 0.2]))
    assert columns[:, PARASITIZED].tolist() == pytest.approx([0.9, 0.2])
    assert columns[:, UNINFECTED].tolist() == pytest.approx([0.1, 0.8])


@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "prune_by_class", "both"])
def test_cleanlab_finds_flipped_labels(filter_by):
    given, parasitized, flipped = noisy_scores(2000, 0.05)
    flagged, quality = flag_label_issues(given, parasitized, filter_by)
    recall = (flagged & flipped).sum() / flipped.sum()
    precision = (flagged & flipped).sum() / flagged.sum()
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    assert quality[flipped].mean() < quality[~flipped].mean()


def test_clean_labels_are_seldom_flagged():
    given, parasitized, _ = noisy_scores(2000, 0.0)
    flagged, _ = flag_label_issues(given, parasitized, "prune_by_noise_rate")
    assert flagged.mean() < 0.01


def test_folds_keep_each_patient_in_one_fold_and_cover_each_pool_cell_once(dataset):
    pool = label_pool(dataset)
    splits = dataset_column(dataset, "split")
    assert sorted(pool.rows.tolist()) == np.flatnonzero(splits != "test").tolist()
    fold_of = assign_folds(pool.labels, pool.groups, folds=3, seed=1)
    assert sorted(set(fold_of.tolist())) == [0, 1, 2]  # every cell in exactly one fold
    for group in set(pool.groups):
        assert len(set(fold_of[pool.groups == group])) == 1, group
    for fold in range(3):
        fold_split = fold_splits(pool.labels, pool.groups, fold_of, fold, seed=1)
        assert (fold_split == "test").tolist() == (fold_of == fold).tolist()
        by_split = {name: set(pool.groups[fold_split == name]) for name in set(fold_split)}
        assert not by_split["train"] & by_split["validation"]
        assert not (by_split["train"] | by_split["validation"]) & by_split["test"]


def test_more_folds_than_patients_allow_is_refused():
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    with pytest.raises(FoldError, match="lower folds"):
        assign_folds(np.array([0, 1] * 3), groups, folds=5, seed=0)


def _review_flagging(dataset, rows: list[int]) -> pd.DataFrame:
    """A review table of the dataset's pool cells with `rows` flagged."""
    pool = label_pool(dataset)
    count = len(pool.rows)
    return review_table(
        pool,
        probability=np.full(count, 0.5),
        quality=np.linspace(0, 1, count),
        flagged=np.isin(pool.rows, rows),
        fold_of=np.zeros(count, dtype=int),
    )


def test_the_dataset_without_flagged_labels_drops_exactly_them(dataset, tmp_path):
    splits = dataset_column(dataset, "split")
    source_ids = dataset_column(dataset, "source_id")
    pool_rows = np.flatnonzero(splits != "test")
    flagged = [int(pool_rows[0]), int(pool_rows[5]), int(pool_rows[-1])]
    review = _review_flagging(dataset, flagged)
    test_row = int(np.flatnonzero(splits == "test")[0])
    review.loc[len(review)] = {**review.iloc[0].to_dict(), "row": test_row, "flagged": True}
    data_dir = location(tmp_path / "data")
    write_review(review, review_location(data_dir, dataset.name), dataset, {"folds": 2})

    derived = without_label_issues(dataset, data_dir, data_dir / "datasets")

    assert derived.rows == dataset.rows - 3
    assert "no-label-issues" in derived.name and derived.name != dataset.name
    kept = set(dataset_column(derived, "source_id"))
    assert kept == set(source_ids) - {source_ids[row] for row in flagged}
    test_before = source_ids[splits == "test"]
    test_after = dataset_column(derived, "source_id")[dataset_column(derived, "split") == "test"]
    assert test_after.tolist() == test_before.tolist()  # every test cell, in order
    assert len(load_split(derived, "test")[1]) == len(test_before)
    excluded = derived.manifest.model_extra[EXCLUDED_FIELD]
    assert excluded["cells"] == 3 and excluded["dataset"] == dataset.name
    assert excluded["review_table"].endswith(f"label-issues/{dataset.name}.parquet")
    assert sorted(excluded["source_ids"]) == sorted(source_ids[flagged].tolist())
    again = without_label_issues(dataset, data_dir, data_dir / "datasets")
    assert again.uri == derived.uri  # found, not written again
    assert without_label_issues(derived, data_dir, data_dir / "datasets").uri == derived.uri
    assert open_dataset(derived.uri).manifest.counts["train"] != dataset.manifest.counts["train"]


def test_exclusion_without_a_review_names_the_command_to_run(dataset, tmp_path):
    data_dir = location(tmp_path / "data")
    with pytest.raises(LabelReviewMissingError, match="malaria label-issues --dataset"):
        without_label_issues(dataset, data_dir, data_dir / "datasets")


def test_a_review_of_another_dataset_is_refused(dataset, tmp_path):
    data_dir = location(tmp_path / "data")
    where = review_location(data_dir, dataset.name)
    write_review(_review_flagging(dataset, []), where, dataset, {})
    table, reviewed = read_review(where)
    assert reviewed["fingerprint"] == dataset.manifest.fingerprint and len(table)
    reviewed_other = dataset.manifest.model_copy(update={"fingerprint": "another"})
    other = type(dataset)(location=dataset.location, manifest=reviewed_other)
    with pytest.raises(LabelReviewMissingError, match="not of dataset"):
        without_label_issues(other, data_dir, data_dir / "datasets")


def test_review_table_ranks_flagged_cells_first_and_the_gallery_titles_them(dataset):
    review = _review_flagging(dataset, [int(label_pool(dataset).rows[-1])])
    assert review["flagged"].tolist()[:2] == [True, False]
    assert review["label_quality"].iloc[1:].is_monotonic_increasing
    summary = ReviewSummary.of(review, dataset, location("/tmp/review.parquet"))
    assert (summary.cells_checked, summary.flagged) == (len(review), 1)
    top = review.head(4)
    images = images_at(dataset, top["row"].tolist())
    assert images.shape == (4, *dataset.image_shape)
    first_train = int(np.flatnonzero(dataset_column(dataset, "split") == "train")[0])
    assert np.array_equal(images_at(dataset, [first_train])[0], load_split(dataset, "train")[0][0])
    figure = label_issue_gallery(images, top["label"], top["parasitized_probability"])
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles[0].startswith(f"given: {top['label_name'].iloc[0]}")
    assert "P(parasitized) = 0.50" in titles[0]


def test_review_scores_every_pool_cell_out_of_fold(dataset, tmp_path):
    config = LabelIssuesConfig(folds=2, variant="simple")
    training = TrainConfig(epochs=1, batch_size=32, augment="none", test_time_augmentation=False)
    shares = []
    review = review_labels(dataset, config, training, location(tmp_path), shares.append)
    pool = label_pool(dataset)
    assert sorted(review["row"]) == pool.rows.tolist()
    assert review["parasitized_probability"].between(0, 1).all()
    assert shares[-1] == pytest.approx(1.0) and not list(tmp_path.iterdir())  # folds removed


def test_a_kept_review_is_reused_only_for_the_same_dataset_and_settings(dataset, tmp_path):
    config = LabelIssuesConfig(folds=2, variant="simple")
    training = TrainConfig(epochs=1, batch_size=32, augment="none", test_time_augmentation=False)
    data_dir = location(tmp_path)
    first, reused_first = current_review(dataset, config, training, data_dir)
    kept = review_location(data_dir, dataset.name).read_bytes()
    again, reused_again = current_review(dataset, config, training, data_dir)
    assert (reused_first, reused_again) == (False, True)
    pd.testing.assert_frame_equal(again, first)
    assert review_location(data_dir, dataset.name).read_bytes() == kept  # not rewritten
    # the ensemble size is not a fold training's setting; the epochs are
    bigger_ensemble = training.model_copy(update={"ensemble": 3, "exclude_label_issues": True})
    assert current_review(dataset, config, bigger_ensemble, data_dir)[1]
    longer = training.model_copy(update={"epochs": 2})
    assert not current_review(dataset, config, longer, data_dir)[1]
    assert not current_review(dataset, config.model_copy(update={"seed": 7}), longer, data_dir)[1]
