"""Thin Flask views: validate with a schema, call a service, shape the response."""
