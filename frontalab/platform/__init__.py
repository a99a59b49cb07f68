"""Trainer, tracking, services, sweeps and registry."""
