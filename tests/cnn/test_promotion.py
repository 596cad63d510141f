import pytest
from pydantic import ValidationError

from cnn.config import PromotionConfig
from cnn.evaluation.promotion import CHALLENGER, CHAMPION, decide_promotion


@pytest.mark.parametrize(
    ("candidate", "champion_version", "champion_score", "margin", "alias"),
    [
        (0.70, None, None, 0.0, CHAMPION),  # the first model
        (0.91, 3, 0.90, 0.0, CHAMPION),
        (0.90, 3, 0.90, 0.0, CHALLENGER),  # a tie does not move the champion
        (0.89, 3, 0.90, 0.0, CHALLENGER),
        (0.91, 3, 0.90, 0.02, CHALLENGER),  # better, but not by the margin
        (0.93, 3, 0.90, 0.02, CHAMPION),
        (None, 3, 0.90, 0.0, CHALLENGER),  # undefined score never displaces
        (0.60, 3, None, 0.0, CHAMPION),
    ],
)
def test_champion_moves_only_to_a_better_model(
    candidate, champion_version, champion_score, margin, alias
):
    decision = decide_promotion(
        candidate, champion_version, champion_score, PromotionConfig(min_margin=margin)
    )
    assert decision.alias == alias
    assert decision.promoted == (alias == CHAMPION)
    assert (decision.candidate_score, decision.champion_score) == (candidate, champion_score)


def test_reason_names_the_metric_and_both_scores():
    decision = decide_promotion(0.8, 2, 0.85, PromotionConfig(metric="f1"))
    assert decision.reason == "f1 0.8000 vs the champion's 0.8500: not better by more than 0"


def test_unknown_metric_is_refused():
    with pytest.raises(ValidationError, match="metric"):
        PromotionConfig(metric="loss")
