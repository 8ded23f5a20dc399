"""``wm keygen``: write a new random secret key to a file (mode 0600, never overwritten)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..keys import DEFAULT_BITS, SecretKey, write_key_file
from .common import run_guarded, stderr


def keygen(
    output: Path = typer.Option(..., "--output", "-o", help="Key file to create (must not exist)."),
    bits: int = typer.Option(DEFAULT_BITS, help="Key size in bits (>= 128, a multiple of 8)."),
) -> None:
    """Write a new random secret key to OUTPUT (hex text, file mode 0600)."""
    key = run_guarded(SecretKey.generate, bits)
    run_guarded(write_key_file, output, key)
    stderr.print(f"wrote a {bits}-bit key to {output} (id {key.fingerprint()}); keep it private", markup=False)
