"""The FastAPI application: one router per resource, errors as {"error": {code, message, field}}."""
