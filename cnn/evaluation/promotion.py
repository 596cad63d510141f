"""Champion/challenger: a new model replaces the champion only if it scores better."""

from dataclasses import dataclass

from cnn.config import PromotionConfig

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    """Which alias a new model version gets, and why."""

    alias: str
    metric: str
    candidate_score: float | None
    champion_score: float | None
    champion_version: int | None
    reason: str

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


def decide_promotion(
    candidate_score: float | None,
    champion_version: int | None,
    champion_score: float | None,
    config: PromotionConfig,
) -> PromotionDecision:
    """Champion if there is none yet, or if the candidate beats it by more than the margin.

    Both scores must come from the same test data. A score can be undefined (ROC-AUC on a
    one-class test split): an undefined candidate never displaces a champion, and a champion
    whose score is undefined is displaced by any defined one.
    """
    metric, margin = config.metric, config.min_margin

    def decision(alias: str, reason: str) -> PromotionDecision:
        return PromotionDecision(
            alias, metric, candidate_score, champion_score, champion_version, reason
        )

    if champion_version is None:
        return decision(CHAMPION, "no champion yet")
    if candidate_score is None:
        return decision(CHALLENGER, f"{metric} is undefined on this test split")
    if champion_score is None:
        return decision(CHAMPION, f"the champion's {metric} is undefined on this test split")
    comparison = f"{metric} {candidate_score:.4f} vs the champion's {champion_score:.4f}"
    if candidate_score > champion_score + margin:
        return decision(CHAMPION, f"{comparison}: better by more than {margin:g}")
    return decision(CHALLENGER, f"{comparison}: not better by more than {margin:g}")
