"""MLflow runs, pipeline parent runs, the model registry, audits of recorded numbers, and a store
opened safely (created once under concurrency; unusable: one error; failing mid-run: one note)."""
