"""The `aivera` command line (typer + rich). Entry point: `client.cli:app`."""

from client.cli.app import app, main

__all__ = ["app", "main"]
