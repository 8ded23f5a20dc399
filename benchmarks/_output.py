"""Result files of the benchmark scripts: never overwrite an earlier result (wmkit.files underneath)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, BinaryIO

from wmkit.errors import InputError
from wmkit.files import check_new, write_file


class ResultFile:
    """An output file that this run owns.

    Refused when the run starts if something is already there (so no benchmark overwrites an
    earlier result, and none fails only after an hour's work); the first :meth:`write` creates it
    atomically without clobbering, and later writes *of the same run* (progress saved after every
    scheme) replace it atomically.
    """

    def __init__(self, path: Path | None, script: str):
        self.path, self._created = path, False
        if path is not None:
            try:
                check_new(path)
            except InputError as e:
                sys.exit(f"{script}: {e}")

    def write(self, data: bytes | str | Callable[[BinaryIO], None]) -> None:
        """Write (or, after the first write of this run, replace) the file; no-op without a path."""
        if self.path is None:
            return
        write_file(self.path, data, overwrite=self._created)
        self._created = True

    def write_json(self, obj: Any) -> None:
        """Write ``obj`` as indented JSON."""
        self.write(json.dumps(obj, indent=1) + "\n")


def output_args(ap: Any) -> None:
    """The ``--json`` and ``--out`` options every table-printing benchmark takes."""
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--out", type=Path, help="write the rows to this JSON file (never overwritten)")


def pick(csv: str, known: Any, script: str, what: str) -> list[str]:
    """The comma-separated names of ``csv``, each one of ``known``; else exit with one line."""
    names = csv.split(",")
    if unknown := [n for n in names if n not in known]:
        sys.exit(f"{script}: unknown {what} {unknown}; choose from {list(known)}")
    return names


def print_table(rows: list[dict], cols: list[str], width: int = 14) -> None:
    """Print ``rows`` as a right-aligned table of the columns ``cols`` (a missing value is blank)."""
    print(" ".join(f"{c[:width]:>{width}}" for c in cols))
    for r in rows:
        print(" ".join(f"{str(r.get(c, '')):>{width}}" for c in cols))
