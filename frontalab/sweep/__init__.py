"""`frontalab sweep`: trials on Ray Tune, tracked under one MLflow parent run."""
