"""Starts the app under gunicorn with the service's config: `python -m service.serve`, with
any further gunicorn options (make run adds --chdir). The Docker image and make run both
start the app this way.

Gunicorn reads WEB_CONCURRENCY itself when it is imported, and fails on an empty value;
here, as in every setting of ours, empty means the default (see
config.unset_empty_gunicorn_settings)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from service.config import unset_empty_gunicorn_settings

CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"


def main() -> None:
    """Run gunicorn until it stops."""
    unset_empty_gunicorn_settings(os.environ)
    from gunicorn.app.wsgiapp import run  # imported after the clean-up: see the module doc

    sys.argv = ["gunicorn", "--config", str(CONFIG), *sys.argv[1:], "service.wsgi:app"]
    run()


if __name__ == "__main__":
    main()
