"""The ``wm`` command line (typer): one module per command, assembled in :mod:`wmkit.cli.main`."""
