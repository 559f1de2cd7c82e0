"""Evaluation: recall under the official protocol, pointing accuracy, the truth check."""
