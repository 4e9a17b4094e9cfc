"""The content-addressed message service."""

__version__ = "0.1.0"
