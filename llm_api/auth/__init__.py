"""Who is calling: API keys, short-lived stream tokens, and the per-request access check."""
