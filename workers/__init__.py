"""Celery workers: advance jobs round by round, persisting every step in the store."""
