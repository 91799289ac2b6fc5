"""custops: customer-operations ML platform (feature store, models, serving, monitoring)."""

__version__ = "0.1.0"
