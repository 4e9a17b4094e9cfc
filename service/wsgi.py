"""The WSGI entry point for gunicorn; the only module that builds an app on import."""

from service import telemetry
from service.app import create_app

# In a gunicorn worker, post_fork has set up this process's tracing by now (gunicorn.conf.py).
app = create_app(tracer_provider=telemetry.process_tracer_provider())
