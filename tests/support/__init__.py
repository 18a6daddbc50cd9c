"""Helpers the tests load into worker processes (via QKAN_BACKEND_PLUGINS and PYTHONPATH)."""
