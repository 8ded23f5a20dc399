"""One way to write a file: atomically, and never over a user's file (and one way to read a text file).

Every writer in wmkit (key files excepted: they need ``O_EXCL`` with mode 0600 from the first
byte, see :func:`wmkit.keys.write_key_file`) goes through :func:`write_file`:

* the data goes to a temporary file in the destination's folder (unique name: ``mkstemp``), is
  flushed and ``fsync``-ed;
* it then becomes the destination in one step: ``os.link`` for a new file, which fails if the
  destination appeared meanwhile (no clobbering, also against a concurrent writer), or
  ``os.replace`` when the caller says ``overwrite=True`` (caches, never user outputs);
* the temporary file is removed whatever happens, so a crash or an exception mid-write leaves
  the old file (or no file) intact, never a truncated one.

:func:`check_new` is the early check a command runs before minutes of work, so that it fails
before the work rather than after; :func:`write_file` checks again at the end. :func:`read_text`
reads a user's text file with one clear error for each way it can be unreadable.
"""

from __future__ import annotations

import codecs
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import InputError

__all__ = ["check_new", "display_path", "iter_text", "read_text", "write_file"]

Writer = Callable[[BinaryIO], None]


def check_new(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`InputError` unless ``path`` can be created as a new file (no file there, folder exists)."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        raise InputError(f"{p} already exists; refusing to overwrite it (choose another output path)")
    if not p.parent.is_dir():
        what = "is not a folder" if p.parent.exists() else "does not exist"
        raise InputError(f"{p.parent} {what}; cannot write {p.name} there")
    return p


def write_file(path: str | os.PathLike[str], data: bytes | str | Writer, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: the destination.
        data: bytes, text (written as UTF-8), or a function that writes the content to the
            binary file object it is given (``np.save``, ``np.savez_compressed``, ``fig.savefig``).
        overwrite: replace an existing file (for caches). By default an existing file is an
            :class:`InputError` and is left untouched.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    p = Path(path)
    if not overwrite:
        check_new(p)
    elif not p.parent.is_dir():
        raise InputError(f"{p.parent} is not a folder; cannot write {p.name} there")
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)  # fails if p appeared meanwhile: never clobbers
            except FileExistsError:
                raise InputError(f"{p} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return p


def _umask() -> int:
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


MAX_INPUT_BYTES = 64 * 2**20  # a text to check whole (wm detect streams larger ones where the scheme can)
READ_BYTES = 1 << 20


def _open_bytes(path: str) -> tuple[BinaryIO, str]:
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, expected a text file")
    try:
        return open(p, "rb"), path
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None


def display_path(path: str) -> str:
    """``path`` as valid Unicode for JSON and reports: a file name that is not UTF-8 (Python holds its
    bytes as lone surrogates) gets its undecodable bytes as ``\\xNN`` escapes.

    >>> display_path("caf\\udce9.txt")
    'caf\\\\xe9.txt'
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _legacy_hint(byte: bytes) -> str:
    """What to do about a byte that is not UTF-8: the common Windows-1252 ("ANSI") and Latin-1 files
    are converted, never guessed (a wrong guess changes the tokens, and so the verdict)."""
    try:
        shown = byte.decode("cp1252")
    except UnicodeDecodeError:
        return "; convert it to UTF-8 first"
    return (f"; if it is Windows-1252 (0x{byte[0]:02x} is {shown!r} there), convert it first: "
            f"iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE.utf8")


def iter_text(path: str, max_bytes: int = MAX_INPUT_BYTES, block: int = READ_BYTES) -> Iterator[str]:
    """Decode a UTF-8 (or BOM-marked UTF-16) text file (``-`` is stdin) incrementally, ``block`` bytes
    at a time: memory stays at one block whatever the file's size. The checks are those of
    :func:`read_text`, raised as :class:`InputError` when the stream reaches the offending byte (so a
    consumer may have seen earlier pieces); nothing past ``max_bytes`` is read."""
    f, name = _open_bytes(path)
    try:
        if path != "-" and Path(path).is_file() and os.fstat(f.fileno()).st_size > max_bytes:
            size = os.fstat(f.fileno()).st_size  # a regular file says its size: refuse it before reading
            raise InputError(f"{name}: {size / 2**20:.1f} MiB is larger than {max_bytes / 2**20:.3g} MiB; raise "
                             f"--max-input-mb, or use wm scan for a corpus")
        head = f.read(min(block, max_bytes + 1))
        utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff")  # UTF-16 with a byte-order mark (Windows editors write it)
        decoder = codecs.getincrementaldecoder("utf-16" if utf16 else "utf-8-sig")()
        size, blank, data = 0, True, head
        while True:
            size += len(data)
            if size > max_bytes:
                raise InputError(f"{name}: larger than {max_bytes / 2**20:.3g} MiB; raise --max-input-mb, or use wm scan "
                                 f"for a corpus")
            if not utf16 and b"\x00" in data:
                raise InputError(f"{name}: binary file (NUL bytes), expected UTF-8 text")
            final = not data
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                if utf16:
                    raise InputError(f"{name}: starts with a UTF-16 byte-order mark but is not UTF-16 text") from None
                bad = e.object[e.start:e.start + 1]  # the decoder's bytes: a held-back partial character included
                at = size - len(e.object) + e.start
                raise InputError(f"{name}: not UTF-8 text (invalid byte {bad[0]:#04x} at offset {at})"
                                 + _legacy_hint(bad)) from None
            if text:
                blank = blank and not text.strip()
                yield text
            if final:
                break
            data = f.read(min(block, max_bytes + 1 - size))
        if blank:
            raise InputError(f"{name}: empty file")
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def read_text(path: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """Read a UTF-8 text file (``-`` is stdin); a clear :class:`InputError` for anything else,
    including an input over ``max_bytes`` (read no further than that: ``/dev/zero`` is refused, not
    read until memory runs out)."""
    return "".join(iter_text(path, max_bytes))
