"""Marshmallow schemas: request schemas (unknown fields raise) and response shapes."""
