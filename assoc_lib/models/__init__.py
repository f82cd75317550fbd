"""Models: the classical scorers (baselines), the deep network, the servable model that wraps either,
pairwise explanations and multi-item rules. Depends on ``assoc_lib.data`` and the foundation only."""
