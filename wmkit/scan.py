"""Corpus-scale detection (``wm scan``): stream documents in shards, score them with any key-only
text detector, write one row per document, resumably. Inputs: text files, folders, JSON lines,
Parquet (row batches, with pyarrow).

Inputs are read in *shards* of at most ``shard_docs`` documents (a JSONL file is cut every
``shard_docs`` lines, text files are grouped ``shard_docs`` to a shard in sorted order), so memory
is bounded by ``workers x shard_docs`` documents whatever the corpus size. A shard's id is its
source and ordinal (``corpus.jsonl#3``): a rerun meets the same shards in the same order.

The output is a folder: one ``part-NNNNN.jsonl`` per shard, each written atomically
(:func:`wmkit.files.write_file`), and ``_manifest.json``, rewritten atomically after each part,
naming the finished shards and the scan's configuration (scheme config, key id, FPR, input
options). A rerun with the same output and configuration skips the finished shards; an existing
output folder without a manifest, or with another configuration, is refused. A crash leaves whole
parts and a manifest that names only them.

Engines: ``local`` (this process, or a pool of ``workers`` processes) and ``ray`` (``workers`` Ray
actors, on a local Ray instance or a cluster; the driver reads the inputs and writes the parts).

Rows: ``id``, ``source`` (``file:line`` for JSONL, ``file:rowN`` for Parquet, both counted from 1;
the file for text files), ``tokens_total``, ``tokens_scored``, ``green_fraction`` (green-list
schemes), ``statistic``, ``z``, ``p_value``, ``verdict`` (:func:`wmkit.stats.verdict`), ``decision``
(``verdict == "watermarked"``), ``key_id`` and ``null`` (what every verdict was given with), and
``window_start``/``window_end`` (token offsets) with ``windowed``, whose counts are then the located
passage's own (the rows of :class:`~wmkit.verify.Verifier`, as ``wm detect`` prints them); a document that cannot be read,
is over ``max_doc_bytes``, or cannot be scored has ``error`` instead (with its id where it has one).

Nothing is written before the first part: a scan that fails to start (a bad model, an unreachable
Ray cluster) leaves no folder, and a manifest that names no finished shard may be replaced by a
scan with another configuration.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import InputError, WmkitError
from .files import display_path, read_text, write_file

MANIFEST = "_manifest.json"
MAX_DOC_BYTES = 4 * 2**20  # wm scan --max-doc-mb default (a 6 MiB document peaks at 1.5 GB RSS); larger: an error row
MANIFEST_FORMAT = "wmkit-scan/1"


@dataclass
class Shard:
    """Up to ``shard_docs`` documents of one source: ``(id, source, text or None, error or None)``."""

    id: str
    docs: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class InputSpec:
    """How documents are found in the inputs.

    Args:
        paths: files, folders (walked recursively, files matching ``glob``) or ``-`` (stdin).
        glob: file-name pattern inside folders.
        field: the text field of JSON lines; ``None`` reads ``.jsonl`` files with field ``text`` and
            other files as one document each.
        id_field: the JSON field holding a document id (default: ``source``).
        shard_docs: documents per shard.
        max_doc_bytes: a document larger than this (UTF-8 bytes) gets an error row instead of being
            scored (memory: one document's tokens and per-token tensors are several times its size).
    """

    paths: tuple[str, ...]
    glob: str = "*"
    field: str | None = None
    id_field: str | None = None
    shard_docs: int = 2000
    max_doc_bytes: int = MAX_DOC_BYTES

    def config(self) -> dict[str, Any]:
        """What a resumed scan must agree on."""
        return {"inputs": [os.path.abspath(p) if p != "-" else "-" for p in self.paths], "glob": self.glob,
                "field": self.field, "id_field": self.id_field, "shard_docs": self.shard_docs,
                "max_doc_bytes": self.max_doc_bytes}


def _walk(folder: str, glob: str) -> Iterator[str]:
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if fnmatch.fnmatch(name, glob) and not name.startswith("."):
                yield os.path.join(root, name)


def _files(spec: InputSpec) -> Iterator[str]:
    for p in spec.paths:
        if p == "-" or not os.path.isdir(p):
            yield p
        else:
            yield from _walk(p, spec.glob)


def check_inputs(spec: InputSpec) -> None:
    """Raise :class:`InputError` for inputs that cannot make a corpus: stdin mixed with paths, a path
    that does not exist, or a folder with no file matching the glob (reading it would give an empty
    result that looks like a clean corpus)."""
    if "-" in spec.paths and len(spec.paths) > 1:
        raise InputError("'-' (stdin) cannot be combined with other inputs")
    for p in spec.paths:
        if p != "-" and not os.path.exists(p):
            raise InputError(f"{p}: no such file or folder")
        if p != "-" and os.path.isdir(p) and next(_walk(p, spec.glob), None) is None:
            raise InputError(f"{p}: no files in this folder match --glob {spec.glob!r}")


def _is_jsonl(path: str, spec: InputSpec) -> bool:
    return spec.field is not None or path.endswith((".jsonl", ".ndjson"))


ROW_COLUMNS = ("id", "source", "tokens_total", "tokens_scored", "green_fraction", "statistic", "z", "p_value", "verdict",
               "decision", "key_id", "null", "window_start", "window_end", "error")


def _too_big(source: str, size: int, limit: int) -> str:
    return (f"{source}: document of {size / 2**20:.1f} MiB is over --max-doc-mb {limit / 2**20:g}; "
            f"check it alone with wm detect (which streams a long text)")


def _jsonl_doc(raw: bytes, source: str, spec: InputSpec) -> tuple[str, str, str | None, str | None]:
    key = spec.field or "text"
    big = len(raw) > spec.max_doc_bytes  # never scored: a 50 MB document costs gigabytes to tokenize and score
    if big and (not spec.id_field or len(raw) > 16 * spec.max_doc_bytes):  # parsed only to find its id
        return source, source, None, _too_big(source, len(raw), spec.max_doc_bytes)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return source, source, None, f"{source}: malformed JSON line ({getattr(e, 'msg', str(e))})"
    doc_id = source
    if isinstance(obj, dict) and spec.id_field and obj.get(spec.id_field) is not None:
        doc_id = str(obj[spec.id_field])
    if big:
        return doc_id, source, None, _too_big(source, len(raw), spec.max_doc_bytes)
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
        return doc_id, source, None, f"{source}: no string field {key!r}"
    return doc_id, source, obj[key], None


def _text_doc(path: str, max_bytes: int) -> tuple[str, str, str | None, str | None]:
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            return path, path, None, _too_big(path, size, max_bytes)
        return path, path, read_text(path), None
    except WmkitError as e:
        return path, path, None, str(e)
    except OSError as e:
        return path, path, None, f"{path}: cannot be read ({e.strerror})"


def _parquet_shards(path: str, spec: InputSpec, skip: Callable[[str], bool]) -> Iterator[Shard]:
    """Row batches of a Parquet file (text column ``spec.field`` or ``text``), never the whole file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield Shard(f"{path}#0", [(path, path, None, f"{path}: reading Parquet needs pyarrow (pip install 'wmkit[parquet]')")])
        return
    column = spec.field or "text"
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        yield Shard(f"{path}#0", [(path, path, None, f"{path}: not a readable Parquet file ({type(e).__name__})")])
        return
    missing = [c for c in (column, spec.id_field) if c is not None and c not in names]
    if missing:
        yield Shard(f"{path}#0", [(path, path, None, f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")])
        return
    row = 0
    batches = pf.iter_batches(batch_size=spec.shard_docs, columns=[c for c in (column, spec.id_field) if c])
    for k in itertools.count():
        shard = Shard(f"{path}#{k}")
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - a corrupt page (bad snappy, checksum) ends this file, not the scan
            yield Shard(shard.id, [(shard.id, f"{path}:row{row + 1}", None,
                                   f"{path}: unreadable from row {row + 1} on ({type(e).__name__}: {str(e).splitlines()[0][:120]})")])
            return
        texts = batch.column(column).to_pylist() if not skip(shard.id) else [None] * batch.num_rows
        ids = batch.column(spec.id_field).to_pylist() if spec.id_field and not skip(shard.id) else [None] * batch.num_rows
        for text, doc_id in zip(texts, ids):
            row += 1
            source = f"{path}:row{row}"
            err = None if skip(shard.id) or isinstance(text, str) else f"{source}: column {column!r} is not a string"
            if err is None and text is not None and len(text) > spec.max_doc_bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > spec.max_doc_bytes:
                err, text = _too_big(source, len(text.encode("utf-8", "surrogatepass")), spec.max_doc_bytes), None
            shard.docs.append((str(doc_id) if doc_id is not None else source, source, text if err is None else None, err))
        yield shard


def iter_shards(spec: InputSpec, skip: Callable[[str], bool] = lambda _: False) -> Iterator[Shard]:
    """The shards of the inputs, streamed; a shard for which ``skip(id)`` is true is counted but not
    read into memory (a resumed scan)."""
    pending = Shard("")
    text_ordinal = 0
    for path in _files(spec):
        if path.endswith(".parquet"):
            yield from _parquet_shards(path, spec, skip)
            continue
        if not _is_jsonl(path, spec):
            if not pending.docs:
                pending.id = f"files#{text_ordinal}"
            pending.docs.append((path, path, None, None) if skip(pending.id) else _text_doc(path, spec.max_doc_bytes))
            if len(pending.docs) == spec.shard_docs:
                yield pending
                pending, text_ordinal = Shard(""), text_ordinal + 1
            continue
        name = "<stdin>" if path == "-" else path
        try:
            stream = sys.stdin.buffer if path == "-" else open(path, "rb")
        except OSError as e:
            yield Shard(f"{name}#0", [(name, name, None, f"{name}: cannot be read ({e.strerror})")])
            continue
        with stream:
            shard, k = Shard(f"{name}#0"), 0
            for line_no, raw in enumerate(stream, 1):
                if not raw.strip():
                    continue
                source = f"{name}:{line_no}"
                shard.docs.append((source, source, None, None) if skip(shard.id) else _jsonl_doc(raw, source, spec))
                if len(shard.docs) == spec.shard_docs:
                    yield shard
                    k += 1
                    shard = Shard(f"{name}#{k}")
            if shard.docs:
                yield shard
    if pending.docs:
        yield pending


class Scorer:
    """Scores the documents of a shard with one :class:`~wmkit.verify.Verifier` (the rows ``wm detect``
    prints, in the scan's columns); builds no per-token lists."""

    def __init__(self, verifier: Any, windowed: bool = False):
        self.verifier, self.windowed = verifier, windowed

    def rows(self, shard: Shard) -> list[dict[str, Any]]:
        """One row per document of ``shard``, in order."""
        ok = [i for i, d in enumerate(shard.docs) if d[3] is None]
        results: list[Any] = [None] * len(shard.docs)
        for i, r in zip(ok, self.verifier.detect([shard.docs[i][2] for i in ok], windowed=self.windowed, evidence=False)):
            results[i] = r
        return [self._row(doc, r) for doc, r in zip(shard.docs, results)]

    def _row(self, doc: tuple[str, str, str | None, str | None], det: Any) -> dict[str, Any]:
        doc_id, source, _, err = doc
        doc_id, source = display_path(doc_id), display_path(source)  # a name that is not UTF-8: \xNN escapes
        if err is not None or isinstance(det, Exception):
            return {"id": doc_id, "source": source, "error": display_path(err or str(det))}
        r = self.verifier.row(det, doc_id)  # windowed: the located passage's own counts, as wm detect
        row = {"id": doc_id, "source": source, "tokens_total": det.details.get("tokens_total"),
               **{k: r[k] for k in ("tokens_scored", "green_fraction", "statistic", "z", "p_value", "verdict")},
               "decision": r["watermarked"], "key_id": r["key_id"], "null": r["null"]}
        if "window_tokens" in r:
            row.update(window_start=r["window_tokens"][0], window_end=r["window_tokens"][1])
        return row


def open_output(out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The manifest of ``out`` for a scan with ``config``: the existing one if the configuration
    matches, else a new one, which is written with the first part (:func:`record_part`), so nothing
    is made before the scan has scored a shard. A folder that is not a scan output, or one whose
    manifest names finished shards of another configuration, is an :class:`InputError`."""
    manifest = out / MANIFEST
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out} exists and is not a scan output folder; refusing to overwrite it")
        if not manifest.is_file():
            if any(out.iterdir()):
                raise InputError(f"{out} exists without a {MANIFEST}; refusing to write into it")
        else:
            try:
                state = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"{manifest}: unreadable manifest ({e})") from None
            if state.get("format") != MANIFEST_FORMAT:
                raise InputError(f"{manifest} is not a wmkit scan manifest; choose another output folder")
            if state.get("config") != config and state.get("done"):
                raise InputError(f"{out} holds a scan with another configuration (scheme, key, FPR or inputs); "
                                 f"choose another output folder")
            if state.get("config") == config:
                return state
    return {"format": MANIFEST_FORMAT, "config": config, "done": {}}


def record_part(out: Path, state: dict[str, Any], shard_id: str, rows: list[dict[str, Any]]) -> None:
    """Write a shard's rows as a new part file (JSON lines, or Parquet when the scan's ``format`` is
    ``parquet``), then name it in the manifest (both atomically)."""
    fmt = state["config"].get("format", "jsonl")
    out.mkdir(parents=True, exist_ok=True)
    part = f"part-{len(state['done']):05d}.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{c: r.get(c) for c in ROW_COLUMNS} for r in rows], schema=_parquet_schema())
        write_file(out / part, lambda f: pq.write_table(table, f))
    else:
        write_file(out / part, "".join(json.dumps(r) + "\n" for r in rows))
    state["done"][shard_id] = {"part": part, "docs": len(rows)}
    write_file(out / MANIFEST, json.dumps(state, indent=1), overwrite=True)


def _parquet_schema() -> Any:
    import pyarrow as pa

    types = {"id": pa.string(), "source": pa.string(), "tokens_total": pa.int64(), "tokens_scored": pa.int64(),
             "decision": pa.bool_(), "verdict": pa.string(), "key_id": pa.string(), "null": pa.string(), "window_start": pa.int64(), "window_end": pa.int64(), "error": pa.string()}
    return pa.schema([(c, types.get(c, pa.float64())) for c in ROW_COLUMNS])


def read_rows(out: Path) -> Iterable[dict[str, Any]]:
    """Every row of a scan output, in shard order (Parquet rows without their null columns)."""
    state = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for entry in state["done"].values():
        if entry["part"].endswith(".parquet"):
            import pyarrow.parquet as pq

            for r in pq.read_table(out / entry["part"]).to_pylist():  # the same dicts as the JSON lines
                if r["error"] is not None:
                    yield {"id": r["id"], "source": r["source"], "error": r["error"]}
                else:
                    yield {k: v for k, v in r.items() if k != "error" and not (k.startswith("window") and v is None)}
            continue
        with open(out / entry["part"], encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


_WORKER: Scorer | None = None


def _init_worker(scheme: Any, model: str | None, det_opts: dict[str, Any], windowed: bool, key_id: str | None = None,
                 pool: bool = True) -> None:
    """A scorer for this process: one tokenizer, one :class:`~wmkit.verify.Verifier` (``det_opts``: its
    ``fpr``, ``min_tokens``, ``null``; ``key_id``: the id already computed, so a worker need not),
    and, in a pool's worker process, one torch thread: the workers share the cores."""
    from .models import load_tokenizer
    from .verify import Verifier

    global _WORKER
    if pool:
        import torch

        torch.set_num_threads(1)
    _WORKER = Scorer(Verifier(scheme, load_tokenizer(model), **det_opts, scheme_key_id=key_id), windowed)


def _score(shard: Shard) -> tuple[str, list[dict[str, Any]]]:
    assert _WORKER is not None
    return shard.id, _WORKER.rows(shard)


def run_scan(spec: InputSpec, scheme: Any, out: Path, config: dict[str, Any], *, model: str | None = None,
             det_opts: dict[str, Any] | None = None, windowed: bool = False, workers: int = 1,
             on_shard: Callable[[list[dict[str, Any]]], None] | None = None, engine: str = "local",
             ray_address: str | None = None, key_id: str | None = None) -> dict[str, int]:
    """Scan ``spec``'s documents with ``scheme`` into the folder ``out`` (see the module docstring).

    ``engine="local"``: ``workers`` processes on this machine score shards in parallel.
    ``engine="ray"``: ``workers`` Ray actors (on the cluster at ``ray_address``, or a local Ray
    instance when ``None``) each hold a detector; this process reads the inputs and ships each
    shard's text to an actor, and writes the parts. Either way at most ``2 x workers`` shards are in
    flight (memory stays bounded) and parts are written in shard order. Returns counts: ``shards``
    written, ``skipped`` (finished by an earlier run), ``docs``, ``errors``.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    check_inputs(spec)
    state = open_output(out, config)
    done = set(state["done"])
    counts = {"shards": 0, "skipped": 0, "docs": 0, "errors": 0}
    args = (scheme, model, det_opts or {}, windowed, key_id if key_id is not None else config.get("key_id"))

    def fresh() -> Iterator[Shard]:
        for s in iter_shards(spec, skip=done.__contains__):
            if s.id in done:
                counts["skipped"] += 1
            else:
                yield s

    if engine == "ray":  # actors' arguments are readable on the cluster: the scheme's subkeys only
        scored = _ray_scored(fresh(), (scheme.scoped() if hasattr(scheme, "scoped") else scheme, *args[1:]),
                             workers, ray_address)
    elif workers <= 1:
        _init_worker(*args, pool=False)  # a bad model fails here, before any file is written
        scored = map(_score, fresh())
    else:
        scored = _pool_scored(fresh(), args, workers)
    for shard_id, rows in scored:
        record_part(out, state, shard_id, rows)
        counts["shards"] += 1
        counts["docs"] += len(rows)
        counts["errors"] += sum("error" in r for r in rows)
        if on_shard is not None:
            on_shard(rows)
    if not (out / MANIFEST).exists():  # an empty corpus: the folder still says what was scanned
        out.mkdir(parents=True, exist_ok=True)
        write_file(out / MANIFEST, json.dumps(state, indent=1), overwrite=True)
    return counts


ENGINES = ("local", "ray")
Scored = Iterator[tuple[str, list[dict[str, Any]]]]


def _in_order(shards: Iterable[Shard], submit: Callable[[Shard], Any], get: Callable[[Any], Any], window: int) -> Scored:
    """Submit shards, at most ``window`` in flight, and yield their results in submission order."""
    from collections import deque

    pending: deque = deque()
    for shard in shards:
        pending.append(submit(shard))
        if len(pending) >= window:
            yield get(pending.popleft())
    while pending:
        yield get(pending.popleft())


def _pool_scored(shards: Iterable[Shard], args: tuple, workers: int) -> Scored:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=args) as pool:
        yield from _in_order(shards, lambda s: pool.apply_async(_score, (s,)), lambda r: r.get(), 2 * workers)


class _RayScorer:
    """A Ray actor's state: one detector, built where the actor runs (:func:`_init_worker`)."""

    def __init__(self, *args: Any) -> None:
        _init_worker(*args)

    def score(self, shard: Shard) -> tuple[str, list[dict[str, Any]]]:
        return _score(shard)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """An :class:`InputError` unless a TCP connection to the Ray address opens within ``timeout``
    seconds (Ray itself retries an unreachable address for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return
    except ValueError:
        raise InputError(f"--ray-address {address!r}: expected HOST:PORT or ray://HOST:PORT") from None
    except OSError as e:
        raise InputError(f"cannot reach the Ray cluster at {address}: {e.strerror or type(e).__name__}") from None


def _ray_scored(shards: Iterable[Shard], args: tuple, workers: int, address: str | None) -> Scored:
    """Score on Ray actors, round robin (each node needs wmkit and the tokenizer's model installed)."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray (pip install 'wmkit[ray]')") from None
    started = not ray.is_initialized()
    if started and address not in (None, "auto", "local"):
        _check_reachable(address)
    if started:
        try:
            ray.init(address=address, num_cpus=None if address else max(1, workers), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot reach the Ray cluster at {address or 'a local instance'}: {str(e).splitlines()[0]}") from None
    try:
        actor = ray.remote(num_cpus=1)(_RayScorer)
        actors = [actor.remote(*args) for _ in range(max(1, workers))]
        turn = iter(range(1 << 62))
        yield from _in_order(shards, lambda s: actors[next(turn) % len(actors)].score.remote(s), ray.get, 2 * len(actors))
    finally:
        if started:
            ray.shutdown()
