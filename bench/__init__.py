"""Switchboard's benchmark: `python -m bench` (see docs/performance.md).

Ingestion (signed, encrypted WeCom and Feishu callbacks against gunicorn, with a bare
DRF POST in the same run as the yardstick), end to end (fixed-rate callbacks through a
real Celery worker pool to a fake platform, with an instant fake model) and context
(Redis round trips per turn). The load generator (bench.loadgen) and the fakes
(tests.fakes.*) also run on their own.
"""
