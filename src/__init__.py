"""memory-models."""
