"""Scoring: a model's P(parasitized) on a split (the one place that reads the model's
output), metrics and the operating point, the promotion rule. Imports `cnn.data`, `cnn.models`.
"""
