"""Dataset preparation and readers."""
