"""A bounded job queue on worker threads, and a gate that bounds quick synchronous requests.

A job is a function `fn(progress) -> dict` where `progress` is a machinegaze.progress callback: the library's
long loops report through it, and it raises JobCancelled once the job was cancelled, which unwinds the loop.
A job that raises anything else is marked failed with its message; the worker thread and the server go on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from machinegaze import GazeError
from machinegaze.progress import Progress
from machinegaze.web.gallery import new_id, valid_id

log = logging.getLogger("machinegaze.web")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = (DONE, FAILED, CANCELLED)


class QueueFull(Exception):
    """The queue holds as many waiting jobs as it may (HTTP 429)."""


class JobCancelled(Exception):
    """Raised from the progress callback of a cancelled job."""


@dataclass
class Job:
    id: str
    kind: str
    fn: Callable[[Callable[[Progress], None]], dict]
    params: dict = field(default_factory=dict)
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    step: int = 0
    total: int = 0
    info: dict = field(default_factory=dict)
    message: str = ""
    result: dict = field(default_factory=dict)
    version: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict:
        info = {k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool)) or v is None}
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "params": self.params,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": {
                "step": self.step,
                "total": self.total,
                "info": info,
                "fraction": (self.step / self.total) if self.total else None,
            },
            "message": self.message,
            "result": self.result,
            "version": self.version,
            "url": f"/api/jobs/{self.id}",
        }


class JobQueue:
    """`workers` threads run jobs first in, first out; at most `max_queued` jobs wait for a busy worker."""

    def __init__(self, workers: int = 1, max_queued: int = 8, keep: int = 256):
        if workers < 1 or max_queued < 0:
            raise GazeError("--workers must be >= 1 and --queue >= 0")
        self.workers, self.max_queued, self.keep = workers, max_queued, keep
        self._jobs: dict[str, Job] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # ---- lifecycle
    def start(self) -> None:
        with self._cond:
            if self._threads or self._stopping:
                return
            for i in range(self.workers):
                t = threading.Thread(target=self._work, name=f"gaze-job-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait (bounded) for the workers to leave."""
        with self._cond:
            self._stopping = True
            for job in list(self._waiting):
                self._finish(job, CANCELLED, "server shutting down")
            self._waiting.clear()
            for job in self._jobs.values():
                job.cancel_requested.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ---- API
    def submit(self, kind: str, fn: Callable[[Callable[[Progress], None]], dict], params: Optional[dict] = None) -> Job:
        """Queue a job. It starts when a worker is free (workers run once start() was called: the app's startup).
        Accepted while the waiting jobs fit into the idle workers plus `max_queued`; else QueueFull."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            running = sum(j.status == RUNNING for j in self._jobs.values())
            idle = max(0, self.workers - running) if self._threads else 0
            if len(self._waiting) >= idle + self.max_queued:
                raise QueueFull(f"the job queue is full ({self.max_queued} waiting); try again when a job has finished")
            job = Job(id=new_id(), kind=kind, fn=fn, params=dict(params or {}))
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._cond.notify()
            return job

    def get(self, job_id: str) -> Optional[Job]:
        if not valid_id(job_id):
            return None
        with self._cond:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Optional[Job]:
        with self._cond:
            job = self._jobs.get(job_id) if valid_id(job_id) else None
            if job is None:
                return None
            if job.status == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, "cancelled before it started")
            elif job.status == RUNNING:
                job.cancel_requested.set()
                job.message = "cancelling..."
                job.version += 1
            return job

    def counts(self) -> dict:
        with self._cond:
            running = sum(j.status == RUNNING for j in self._jobs.values())
            return {
                "waiting": len(self._waiting),
                "running": running,
                "workers": self.workers,
                "max_queued": self.max_queued,
            }

    # ---- internals
    def _finish(self, job: Job, status: str, message: str = "", result: Optional[dict] = None) -> None:
        job.status, job.message, job.finished = status, message, time.time()
        if result is not None:
            job.result = result
        job.version += 1
        self._finished.append(job.id)
        while len(self._finished) > self.keep:
            self._jobs.pop(self._finished.popleft(), None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.status, job.started = RUNNING, time.time()
                job.version += 1
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(p: Progress) -> None:
            if job.cancel_requested.is_set():
                raise JobCancelled()
            with self._cond:
                job.step, job.total, job.info = int(p.step), int(p.total), dict(p.info)
                job.version += 1

        try:
            if job.cancel_requested.is_set():
                raise JobCancelled()
            result = job.fn(progress)
        except JobCancelled:
            with self._cond:
                self._finish(job, CANCELLED, "cancelled")
        except GazeError as e:
            with self._cond:
                self._finish(job, FAILED, str(e))
        except BaseException as e:  # noqa: BLE001 - a crashing job must never take the worker (or server) down
            log.exception("job %s (%s) crashed", job.id, job.kind)
            with self._cond:
                self._finish(job, FAILED, f"internal error ({type(e).__name__}: {e})")
            if isinstance(e, KeyboardInterrupt):
                raise
        else:
            with self._cond:
                if job.cancel_requested.is_set() and result is None:
                    self._finish(job, CANCELLED, "cancelled")
                else:
                    self._finish(job, DONE, "", result or {})


class Gate:
    """Bounds quick synchronous requests: `slots` run at once, at most `max_waiting` wait (else QueueFull)."""

    def __init__(self, slots: int, max_waiting: int):
        self._sem = threading.Semaphore(max(1, slots))
        self._lock = threading.Lock()
        self._inside = 0
        self._limit = max(1, slots) + max(0, max_waiting)

    def __enter__(self) -> Gate:
        with self._lock:
            if self._inside >= self._limit:
                raise QueueFull("the server is busy (too many requests waiting); try again shortly")
            self._inside += 1
        self._sem.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sem.release()
        with self._lock:
            self._inside -= 1
