"""Trainers (one module each, registered in `pipeline.registry.TRAINERS`), losses and retrieval metrics."""
