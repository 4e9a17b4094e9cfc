"""The native stack: the same processes and config files as docker compose, without Docker."""
