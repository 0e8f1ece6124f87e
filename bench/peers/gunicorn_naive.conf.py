"""gunicorn settings for the naive Flask baseline (so the service's gunicorn.conf.py is not picked up)."""

worker_class = "gevent"
workers = 1
timeout = 600
