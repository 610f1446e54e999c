"""Run logs: what `get_run_logger()` (and `log_prints`) records inside a run is sent to the
server in batches and stored with the run, so its story can be read after its process is gone.

A logging handler puts each line of a run into a bounded buffer; one thread sends the buffer
every half second (or sooner when a batch is full). Logging never waits for the server: when it
is slow or away, lines wait in the buffer, and when the buffer is full the oldest are dropped and
counted, with a warning. A process that dies loses at most the lines of the last half second; one
that ends normally sends what is left (waiting a bounded time), and so does the end of a flow run
that is not a subflow.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from stateward.exceptions import InvalidArgument, NotFound
from stateward.runs import LogEntry

log = logging.getLogger("stateward")

DEFAULT_BUFFER = 10_000  # lines waiting to be sent, at most
BATCH = 500  # lines in one call, at most
INTERVAL = 0.5  # seconds between two sends
_RUN_IDS = "stateward_run_ids"  # the LogRecord attribute naming the run: (flow run, task run)


def buffer_size() -> int:
    """STATEWARD_LOGS_BUFFER: the most lines waiting to be sent (10,000)."""
    return max(1, int(os.environ.get("STATEWARD_LOGS_BUFFER") or DEFAULT_BUFFER))


def run_extra(flow_run_id: str, task_run_id: str) -> dict[str, tuple[str, str]]:
    """The `extra` of a log call about a run: its line is sent to the server."""
    return {_RUN_IDS: (flow_run_id, task_run_id)}


class LogShipper:
    """The buffer of lines waiting to be sent, and the thread sending them with `send`."""

    def __init__(self, send: Callable[[Sequence[LogEntry]], object], capacity: int) -> None:
        self.send = send
        self.capacity = capacity
        self._lines: deque[LogEntry] = deque()
        self._lock = threading.Condition()
        self._in_flight = 0
        self._flushing = 0  # flushes waiting: the thread sends at once, not at its interval
        self.dropped = 0  # lines dropped since the last warning
        self.dropped_total = 0
        self._thread: threading.Thread | None = None
        self.failing = False  # the last send failed: the server is slow or away

    def add(self, entry: LogEntry) -> None:
        """Queue a line (never blocks, never raises): drops the oldest when full."""
        with self._lock:
            if len(self._lines) >= self.capacity:
                self._lines.popleft()
                self.dropped += 1
                self.dropped_total += 1
            self._lines.append(entry)
            if len(self._lines) >= BATCH:
                self._lock.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="stateward-logs", daemon=True
                )
                self._thread.start()

    def queued(self) -> int:
        """Lines in the buffer (at most its capacity; a batch being sent is not among them)."""
        with self._lock:
            return len(self._lines)

    def pending(self) -> int:
        """Lines not sent yet: in the buffer or being sent."""
        with self._lock:
            return len(self._lines) + self._in_flight

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until every queued line was sent; True if so."""
        deadline = time.monotonic() + timeout
        with self._lock:
            # Counted, not only notified: a thread not yet waiting (just started, or sending)
            # would miss the notification and wait out its interval.
            self._flushing += 1
            self._lock.notify_all()
            try:
                while self._lines or self._in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._lock.wait(min(left, 0.05))
            finally:
                self._flushing -= 1
        return True

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if len(self._lines) < BATCH and not (self._flushing and self._lines):
                    self._lock.wait(INTERVAL)
                batch = [self._lines.popleft() for _ in range(min(BATCH, len(self._lines)))]
                self._in_flight = len(batch)
                dropped, self.dropped = self.dropped, 0
            if dropped:
                log.warning(
                    "dropped %d run log line(s): the buffer of %d lines was full (the server "
                    "is slow or away); STATEWARD_LOGS_BUFFER sets its size",
                    dropped,
                    self.capacity,
                )
            if not batch:
                continue
            try:
                self.send(batch)
                failures = 0
                self.failing = False
            except (NotFound, InvalidArgument) as error:  # sending it again cannot help
                with self._lock:
                    self.dropped_total += len(batch)
                log.warning("dropped %d run log line(s) the server refused: %s", len(batch), error)
            except Exception as error:  # the thread must outlive any failure
                self.failing = True
                failures += 1
                with self._lock:  # back in front, still bounded: the oldest go first
                    room = self.capacity - len(self._lines)
                    kept = batch[len(batch) - room :] if room < len(batch) else batch
                    lost = len(batch) - len(kept)
                    self.dropped += lost
                    self.dropped_total += lost
                    self._lines.extendleft(reversed(kept))
                if failures == 1:
                    log.warning("could not send run logs (%s); they wait and are sent later", error)
                time.sleep(min(5.0, INTERVAL * 2**failures))
            finally:
                with self._lock:
                    self._in_flight = 0
                    self._lock.notify_all()


class RunLogHandler(logging.Handler):
    """Sends the lines logged about a run (those with its ids) to the shipper."""

    def __init__(self, shipper: LogShipper) -> None:
        super().__init__()
        self.shipper = shipper

    def emit(self, record: logging.LogRecord) -> None:
        ids = getattr(record, _RUN_IDS, None)
        if ids is None:
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                shown = record.exc_text or logging.Formatter().formatException(record.exc_info)
                message = f"{message}\n{shown}"
            self.shipper.add(
                LogEntry(
                    flow_run_id=ids[0],
                    task_run_id=ids[1],
                    timestamp=datetime.fromtimestamp(record.created, UTC),
                    level=record.levelno,
                    logger=record.name,
                    message=message,
                )
            )
        except Exception:  # logging must never fail a run
            self.handleError(record)


_shipper: LogShipper | None = None
_install_lock = threading.Lock()


def _forget_in_child() -> None:
    """In a forked child: the parent's shipper sends with the parent's client, from a thread
    that did not come along, and its lock may have been held at the fork; its handler goes,
    so the lines the child logs about runs wait for a run of the child to install its own
    (the parent's waiting lines stay the parent's to send)."""
    global _shipper, _install_lock
    if _shipper is not None:
        stateward_log = logging.getLogger("stateward")
        for handler in list(stateward_log.handlers):
            if isinstance(handler, RunLogHandler) and handler.shipper is _shipper:
                stateward_log.removeHandler(handler)
    _shipper = None
    _install_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def install(send: Callable[[Sequence[LogEntry]], object]) -> LogShipper:
    """Start sending run logs with `send` (once per process); returns the shipper."""
    global _shipper
    with _install_lock:
        if _shipper is None:
            _shipper = LogShipper(send, buffer_size())
            logging.getLogger("stateward").addHandler(RunLogHandler(_shipper))
            atexit.register(flush, 3.0)
        return _shipper


def flush(timeout: float = 2.0) -> None:
    """Send what waits (at most `timeout` seconds), e.g. when a flow run ends; at once when
    the server is away (the lines keep waiting in the buffer)."""
    if _shipper is not None and not _shipper.failing:
        _shipper.flush(timeout)
