"""GET /metrics as samples: scraped from a Flask test client or a live server's URL, and looked up by name and
labels."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, keyed by (sample name, sorted labels)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(target) -> Samples:
    """Every sample of GET /metrics on ``target``: a live server's URL, or a Flask test client."""
    if isinstance(target, str):
        response = requests.get(f"{target}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse(response.text)
    response = target.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0.0 when there is none."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
