"""Gradient tails: statistics, the TensorBoard tags they are logged under, and reports read back from logs."""
