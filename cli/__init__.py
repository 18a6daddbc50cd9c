"""The ``qkan-orch`` command line."""
