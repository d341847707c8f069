"""Metric-based learners: classify queries by a (learned) similarity to the support set."""
