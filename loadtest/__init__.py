"""Locust load tests for Triton's ``recommend`` and the feed service (run from the repository
root: ``python -m loadtest ...`` or ``locust -f loadtest/locustfile.py``; not installed)."""
