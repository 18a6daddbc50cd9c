"""The REST service: settings, the job store (the truth about jobs), and the FastAPI app.

Importing this package is cheap: the app and the database load on demand.
"""
