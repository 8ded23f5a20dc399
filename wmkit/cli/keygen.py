"""``wm keygen``: write a new random secret key to a file (mode 0600, never overwritten)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..files import check_new, write_file
from ..keys import DEFAULT_BITS, SecretKey, write_key_file
from .common import run_guarded, stderr


def keygen(
    output: Path = typer.Option(..., "--output", "-o", help="Key file to create (must not exist)."),
    bits: int = typer.Option(DEFAULT_BITS, help="Key size in bits (>= 128, a multiple of 8)."),
) -> None:
    """Write a new random secret key to OUTPUT (hex text, file mode 0600) and its public commitment to
    OUTPUT.commitment (publish it: revealing the key later proves it is the one committed to)."""
    if not output.name or output.is_dir() or str(output).endswith(("/", "\\")):
        from .common import die

        die(f"-o: expected the path of a new key file, got {str(output)!r} (a folder or nothing)")
    commitment_file = output.with_name(output.name + ".commitment")
    run_guarded(check_new, commitment_file)
    key = run_guarded(SecretKey.generate, bits)
    run_guarded(write_key_file, output, key)
    run_guarded(write_file, commitment_file, key.commitment() + "\n")
    stderr.print(f"wrote a {bits}-bit key to {output} (id {key.fingerprint()}); keep it private", markup=False)
    stderr.print(f"commitment {key.commitment()} (public, in {commitment_file})", markup=False)
