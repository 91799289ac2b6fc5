"""custops.features."""
