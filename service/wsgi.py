"""The WSGI entry point for gunicorn; the only module that builds an app on import."""

from service.app import create_app

app = create_app()
