"""Metrics: pure tensor functions with shape contracts (rollout errors, conservation, SampleGain, ...)."""
