"""Starts the app under gunicorn with the service's config: `python -m service.serve`, with
any further gunicorn options (make run adds --chdir). The Docker image and make run both
start the app this way.

Gunicorn reads WEB_CONCURRENCY itself when it is imported, and fails on an empty value
(compose passes one when the variable is unset); here, as in every setting of ours, empty
means the default (service/config.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"


def main() -> None:
    """Run gunicorn until it stops."""
    if not os.environ.get("WEB_CONCURRENCY", "x").strip():
        del os.environ["WEB_CONCURRENCY"]
    from gunicorn.app.wsgiapp import run  # imported after the clean-up: see the module doc

    sys.argv = ["gunicorn", "--config", str(CONFIG), *sys.argv[1:], "service.wsgi:app"]
    run()


if __name__ == "__main__":
    main()
