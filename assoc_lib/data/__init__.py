"""Data contract, adapters and the synthetic generator."""
