"""MLflow runs, pipeline parent runs, the model registry, and audits of recorded numbers."""
