"""`frontalab evaluate`: does a model frontalize? `run` evaluates, `metrics` scores, `report` writes it up; what
is measured of each output is `frontalab.measure`'s, as in validation."""

from frontalab.evaluation.metrics import (auc_interval, normalized_share, pair_distances, roc_auc, roc_curve,
                                          spread_per_person, verification_pairs)
from frontalab.evaluation.run import (HEADLINE, Faces, ModelUnderTest, evaluate_model, load_model, select_people,
                                      summarise)

__all__ = ["HEADLINE", "Faces", "auc_interval", "ModelUnderTest", "evaluate_model", "load_model", "normalized_share",
           "pair_distances", "roc_auc", "roc_curve", "select_people", "spread_per_person", "summarise",
           "verification_pairs"]
