"""Micro-batching for the servers: the work of concurrent requests runs as one batch on a shared model.

A :class:`MicroBatcher` owns a queue and one worker thread. :meth:`~MicroBatcher.submit` queues a
request's items and returns one :class:`~concurrent.futures.Future` per item. The worker waits for
the model (``lock``), then takes the first waiting item and, for up to ``gather_s`` seconds, more
(never past ``max_batch`` units of work: ``size(item)`` each; an item too big to join is the first
of the next batch), and calls ``run(items)`` once. ``run`` returns one result per item -- a value,
or an exception instance that fails that item alone; if ``run`` raises, every item of the batch
fails with that error, and the server goes on. ``gather_s = 0`` takes only what is already queued:
under load, items pile up while the model is busy and batches form with no added latency.

An item is started (it can no longer be cancelled) only once the model is free, so a request whose
deadline passes while it waits cancels its futures and never runs. More than ``max_queue`` units
waiting: :meth:`~MicroBatcher.submit` refuses at once with a 503 :class:`RequestError`.

Continuous batching: while it runs, ``run`` may take items queued meanwhile into the running batch
(:meth:`~MicroBatcher.join`, never past the room it names) and resolve any item the moment it is
done (:meth:`~MicroBatcher.finish`); the result ``run`` returns for an item already finished is
ignored. So a request that arrives mid-batch starts at the batch's next step instead of after its
end, and a short item does not wait for a long one. An item ``run`` joined but never finished
fails (with ``run``'s error if it raised).

:meth:`~MicroBatcher.close` (a server's shutdown) refuses new items with a 503, lets the worker
run what is queued and end, and waits for it, so no batch is still in a forward pass when the
process exits.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, ContextManager, Generic, Sequence, TypeVar

from ..engine import Generator, Job
from ..errors import RequestError
from .defaults import MAX_BATCH

T = TypeVar("T")
_STOP: Any = object()  # queued by close(): the worker ends when it reaches it


class MicroBatcher(Generic[T]):
    """Runs the items of concurrent requests together on one model (see the module docstring).

    Args:
        run: ``run(items) -> results``, one result (or exception instance) per item, in order.
        lock: held while a batch is taken and run; whoever else uses the model holds it too.
        max_batch: units of work per batch (an item bigger than this runs alone).
        max_queue: units that may wait; past it new requests get a 503.
        gather_s: how long to wait for company after the first item (0: take what is queued).
        size: units of work of an item (default 1).
        eager: items that need no company (run at once, e.g. a cached answer).
        what: what the units are, for the overload message ("completions", "texts").
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[Any]],
        lock: ContextManager[Any],
        max_batch: int = MAX_BATCH,
        max_queue: int = 256,
        gather_s: float = 0.02,
        size: Callable[[T], int] = lambda item: 1,
        eager: Callable[[T], bool] = lambda item: False,
        what: str = "items",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or gather_s < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, gather_s >= 0; got {max_batch}, {max_queue}, {gather_s}")
        self.run, self.lock, self.size, self.eager, self.what = run, lock, size, eager, what
        self.max_batch, self.max_queue, self.gather_s = max_batch, max_queue, gather_s
        self.queue: queue.Queue[tuple[T, Future]] = queue.Queue()
        self._held: tuple[T, Future] | None = None  # taken from the queue but too big for the last batch
        self._waiting = 0  # units queued or held, not yet taken into a batch
        self._running: list[tuple[T, Future]] = []  # started, not yet finished (in the order started)
        self._count = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="wmkit-batcher", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        """Units queued and not yet taken into a batch."""
        return self._waiting

    def submit(self, items: Sequence[T]) -> list[Future]:
        """Queue ``items`` (all or none); their futures resolve to ``run``'s results."""
        units = sum(self.size(item) for item in items)
        futures: list[Future] = [Future() for _ in items]
        with self._count:  # queued under the lock, so never behind close()'s stop mark
            if self._closed:
                raise RequestError("the server is shutting down", None, 503)
            if self._waiting + units > self.max_queue:
                raise RequestError(f"the server is overloaded ({self._waiting} {self.what} waiting); retry later", None, 503)
            self._waiting += units
            for item, future in zip(items, futures):
                self.queue.put((item, future))
        return futures

    def close(self, timeout: float | None = 60.0) -> bool:
        """Refuse new items (503), let the worker run what is queued and stop; wait up to ``timeout``
        seconds for it (``None``: as long as it takes). Whether it has stopped."""
        with self._count:
            if not self._closed:
                self._closed = True
                self.queue.put(_STOP)
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def _next(self, timeout: float | None) -> tuple[T, Future]:
        if self._held is not None:
            entry, self._held = self._held, None
            return entry
        return self.queue.get(timeout=timeout)

    def _gather(self, first: tuple[T, Future] | None, room: int, until: float) -> list[T]:
        """Entries from the queue (after ``first``) up to ``room`` units, waiting until ``until``
        (``time.monotonic()``) for more; they are started and returned as items (the cancelled dropped)."""
        batch = [first] if first is not None else []
        units = sum(self.size(item) for item, _ in batch)
        while units < room:
            try:
                entry = self._next(max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if entry is _STOP or units + self.size(entry[0]) > room:
                self._held = entry
                break
            batch.append(entry)
            units += self.size(entry[0])
        with self._count:
            self._waiting -= units
        started = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
        self._running.extend(started)
        return [item for item, _ in started]

    def _take(self) -> list[T]:
        first = self._next(None)
        until = time.monotonic() + (0.0 if self.eager(first[0]) else self.gather_s)
        return self._gather(first, self.max_batch, until)

    def join(self, room: int) -> list[T]:
        """From inside ``run``: the items queued now, up to ``room`` units (without waiting), started
        and part of the running batch; ``run`` must :meth:`finish` each of them."""
        return self._gather(None, room, 0.0) if room > 0 else []

    def finish(self, item: T, result: Any) -> None:
        """Resolve ``item``'s future now with ``result`` (a value, or an exception instance that fails
        it); an item already finished is left as it is. Items are told apart by identity (``is``);
        of several identical ones, the first started is resolved first."""
        at = next((i for i, (x, _) in enumerate(self._running) if x is item), None)
        if at is None:
            return
        future = self._running.pop(at)[1]
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _loop(self) -> None:
        while True:
            if self._held is None:  # wait for work without holding the model
                self._held = self.queue.get()
            if self._held is _STOP:
                return
            with self.lock:  # items start (and can no longer be cancelled) once the model is free
                batch = self._take()
                if not batch:
                    continue
                try:
                    results = list(self.run(batch))
                    if len(results) != len(batch):
                        raise RuntimeError(f"run returned {len(results)} results for {len(batch)} items")
                    left: BaseException = RuntimeError("the batch ended without a result for a joined item")
                except Exception as e:  # noqa: BLE001 - a fault fails this batch's requests, not the server
                    results, left = [e] * len(batch), e
            for item, res in zip(batch, results):
                self.finish(item, res)
            for item, _ in list(self._running):
                self.finish(item, left)


class Batcher(MicroBatcher[Job]):
    """The completions' :class:`~wmkit.server.batching.MicroBatcher`, continuous: up to ``max_batch``
    jobs run in lockstep by :meth:`Generator.run_batch`, and jobs queued while a batch runs join it
    (while fewer than ``max_batch`` rows run). Each future resolves to :meth:`Generator.result` (or
    raises its error) the moment its job ends. More than ``max_queue`` waiting jobs: new requests
    get a 503 at once.

    Joining costs a forward pass of its own (the newcomers' prefill), so
    waiting jobs join a running batch only once they are at least ``join_ratio`` times as many as
    the rows running, or have waited ``join_wait_steps`` steps (the rule of TGI's router, with its
    waiting-served ratio and maximum waiting tokens); into an idle model they go at once
    (after ``gather_s`` seconds of gathering company; a one-token answer from cached prompt logits
    never waits). On 2 CPU cores a uniform load then runs at 0.97-1.12x the lockstep batcher's
    throughput and a mixed one (4/16/64 tokens, 16 clients) at 1.53x (``benchmarks/serve_batching.py``)."""

    def __init__(self, generator: Generator, max_batch: int = MAX_BATCH, max_queue: int = 256, gather_s: float = 0.02,
                 join_ratio: float = 0.5, join_wait_steps: int = 8):
        if join_ratio < 0 or join_wait_steps < 0:
            raise ValueError(f"need join_ratio >= 0 and join_wait_steps >= 0; got {join_ratio}, {join_wait_steps}")
        self.gen, self.join_ratio, self.join_wait_steps = generator, join_ratio, join_wait_steps
        self._held_back = 0  # consecutive steps with jobs waiting that did not join
        super().__init__(self._run, generator.lock, max_batch=max_batch, max_queue=max_queue, gather_s=gather_s,
                         eager=generator.cached, what="completions")

    def _admit(self, running: int) -> list[Job]:
        """The jobs that join now, with ``running`` rows running (see the class docstring)."""
        if not self.waiting:
            self._held_back = 0
            return []
        if running and self.waiting < self.join_ratio * running and self._held_back < self.join_wait_steps:
            self._held_back += 1
            return []
        self._held_back = 0
        return self.join(self.max_batch - running)

    def close(self, timeout: float | None = 60.0) -> bool:
        """:meth:`MicroBatcher.close`, and the jobs still generating end at their next step (a 503)."""
        super().close(timeout=0)  # no new jobs from here on
        for job, _ in list(self._running):
            job.error = RequestError("the server is shutting down", None, 503)
            job.cancelled = True
        return super().close(timeout)

    def _outcome(self, job: Job) -> Any:
        try:
            return self.gen.result(job)
        except RequestError as e:
            return e

    def _run(self, jobs: list[Job]) -> list[Any]:
        self.gen.run_batch(jobs, join=self._admit,
                           finished=lambda job: self.finish(job, self._outcome(job)))
        return [None] * len(jobs)  # every job was finished as it ended


def timeout_error(futures: list[Future], timeout_s: float) -> RequestError:
    """The 503 of a request past its deadline: "busy" if a job never got the model (it is cancelled
    and never runs), "timed out" if it was generating."""
    waited = any(f.cancel() for f in futures)
    msg = (f"the server is busy: no model time within {timeout_s:g} s; retry later" if waited
           else "the request timed out; ask for fewer tokens or retry")
    return RequestError(msg, None, 503)
