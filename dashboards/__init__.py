"""Prometheus scrape config, recording and alerting rules, and the Grafana dashboard, all
generated from ``panels.py`` (``python -m dashboards.build``); ``python -m dashboards.render``
plots the key panels as PNG files. Run from the repository root; not installed."""
