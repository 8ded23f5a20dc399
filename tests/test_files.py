"""wmkit.files: atomic, no-clobber writes (the helper every writer uses)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from wmkit.errors import InputError
from wmkit.files import check_new, write_file


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_new_file_text_bytes_and_writer(tmp_path: Path) -> None:
    assert write_file(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert write_file(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    arr = np.arange(5.0)
    write_file(tmp_path / "c.npy", lambda f: np.save(f, arr))
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), arr)  # no ".npy" appended to a temp name
    assert leftovers(tmp_path) == []


def test_existing_file_is_refused_and_untouched(tmp_path: Path) -> None:
    p = tmp_path / "result.json"
    p.write_text("earlier result")
    with pytest.raises(InputError, match="already exists; refusing to overwrite"):
        write_file(p, "new")
    with pytest.raises(InputError, match="already exists"):
        check_new(p)
    assert p.read_text() == "earlier result"
    assert leftovers(tmp_path) == []


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope does not exist"):
        write_file(tmp_path / "nope" / "x.txt", "x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="afile is not a folder"):
        write_file(tmp_path / "afile" / "x.txt", "x")


def test_overwrite_replaces(tmp_path: Path) -> None:
    p = tmp_path / "cache.npy"
    p.write_text("stale")
    write_file(p, lambda f: np.save(f, np.ones(3)), overwrite=True)
    np.testing.assert_array_equal(np.load(p), np.ones(3))


@pytest.mark.parametrize("overwrite", [False, True])
def test_exception_mid_write_keeps_the_old_file(tmp_path: Path, overwrite: bool) -> None:
    p = tmp_path / "tagger.safetensors"
    if overwrite:
        p.write_bytes(b"old weights")

    def half_then_fail(f):  # noqa: ANN001
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file(p, half_then_fail, overwrite=overwrite)
    assert (p.read_bytes() == b"old weights") if overwrite else not p.exists()
    assert leftovers(tmp_path) == []


def test_process_killed_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "corpus.npz"
    p.write_bytes(b"old corpus")
    code = textwrap.dedent(f"""
        import os
        from wmkit.files import write_file
        def die(f):
            f.write(b"x" * 100000)
            f.flush()
            os._exit(9)  # a crash: no finally, no cleanup
        write_file({str(p)!r}, die, overwrite=True)
    """)
    rc = subprocess.run([sys.executable, "-c", code]).returncode
    assert rc == 9
    assert p.read_bytes() == b"old corpus"


def test_a_file_that_appears_mid_write_is_not_clobbered(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"

    def racing_writer(f):  # noqa: ANN001
        f.write(b"ours")
        p.write_text("someone else's")  # another process creates the destination meanwhile

    with pytest.raises(InputError, match="already exists"):
        write_file(p, racing_writer)
    assert p.read_text() == "someone else's"
    assert leftovers(tmp_path) == []


def test_library_writers_refuse_to_overwrite(tmp_path: Path) -> None:
    """The tagger and signature writers go through write_file."""
    from wmkit.fingerprint.signature import Signature
    from wmkit.watermark.text.ie.tagger import CausalTagger

    tagger = CausalTagger({"vocab_size": 50, "dim": 4, "channels": 8, "layers": 1})
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        tagger.save(p)
    sig = Signature(basis=np.eye(4, 2, dtype=np.float32), hidden_size=4, meta={})
    q = tmp_path / "s.safetensors"
    q.write_bytes(b"precious too")
    with pytest.raises(InputError, match="already exists"):
        sig.save(q)
    assert p.read_bytes() == b"precious" and q.read_bytes() == b"precious too"
