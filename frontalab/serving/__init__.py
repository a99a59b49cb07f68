"""Serving: a checkpoint as a frontalizer, its MLflow pyfunc, and `promote`, which makes a sweep's best the champion."""
