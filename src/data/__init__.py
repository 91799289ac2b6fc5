"""custops.data."""
