"""`frontalab evaluate`: does a model frontalize? `run` evaluates, `metrics` measures, `report` writes it up."""

from frontalab.evaluation.metrics import (auc_interval, mouth_opening, normalized_share, pair_distances, roc_auc, roc_curve,
                                          spread_per_person, verification_pairs)
from frontalab.evaluation.run import (HEADLINE, Faces, ModelUnderTest, evaluate_model, load_model, pose_and_mouth,
                                      select_people, summarise)

__all__ = ["HEADLINE", "Faces", "auc_interval", "ModelUnderTest", "evaluate_model", "load_model", "mouth_opening", "normalized_share",
           "pair_distances", "pose_and_mouth", "roc_auc", "roc_curve", "select_people", "spread_per_person",
           "summarise", "verification_pairs"]
