"""The ``ferrollm`` command line."""

from ferrollm.cli.main import main

__all__ = ["main"]
