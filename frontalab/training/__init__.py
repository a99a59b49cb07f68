"""Training: one trial's loop and its checkpoints, where a checkpoint comes from, and the landmark student."""
