"""A running server's Prometheus /metrics (rbm-serve --metrics-port), read as the tests need."""

from __future__ import annotations

import urllib.request


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics, keyed by its name with labels as exposed (``name{a="b"}``)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed
    return scrape(url).get(f"{name}{{{want}}}" if labels else name, 0.0)


def histogram(url: str, name: str) -> dict[float, float]:
    """A label-less histogram's cumulative buckets: upper bound -> observations at or below it."""
    prefix = f'{name}_bucket{{le="'
    return {
        float(key[len(prefix) : -2]): value
        for key, value in scrape(url).items()
        if key.startswith(prefix)
    }
