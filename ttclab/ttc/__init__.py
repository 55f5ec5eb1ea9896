"""Test-time computing controllers: rollout baseline (and, with later stages, greedy and beam)."""
