"""Per-key quotas: requests and tokens per minute, and concurrent streams, shared by all workers."""
