"""Test-time computing: the plain rollout (rollout.py) and the reward-guided search of every selector
(search.py), composed of the step parts in steps.py."""
