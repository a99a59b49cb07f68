"""Tracking: a trial's MLflow tracker and its sender process, and `store`, the one door to MLflow."""
