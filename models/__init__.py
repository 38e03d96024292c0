"""Fraud: features, training, registry, scoring and the simulator."""
