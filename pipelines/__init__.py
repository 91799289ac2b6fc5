"""Training pipelines: wiring of custops steps (feature snapshot in, registered model out)."""
