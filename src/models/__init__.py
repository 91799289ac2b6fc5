"""custops.models."""
