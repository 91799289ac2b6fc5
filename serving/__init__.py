"""BentoML serving layer for custops."""
