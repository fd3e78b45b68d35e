"""Data layer: schema, ingestion, readers, splits, encoded dataset artifact, synthetic data."""
