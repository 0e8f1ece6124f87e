"""The chat API's timestamps, ``"2025-01-01 12:00:00"``: in answers, listed exchanges and the exchange log.

A module of its own, importing nothing of the project, so that the services and the schemas share it
without either importing the other.
"""

from __future__ import annotations

from datetime import datetime

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def format_time(moment: datetime) -> str:
    return moment.strftime(TIME_FORMAT)
