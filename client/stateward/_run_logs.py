"""Run logs: what `get_run_logger()` (and `log_prints`) records inside a run is sent to the
server in batches and stored with the run, so its story can be read after its process is gone.

A logging handler puts each line of a run into a bounded buffer; one thread sends the buffer
every half second (or sooner when a batch is full). Logging never waits for the server: when it
is slow or away, lines wait in the buffer, and when the buffer is full the oldest are dropped and
counted, with a warning. A process that dies loses at most the lines of the last half second; one
that ends normally sends what is left (waiting a bounded time), and so does the end of a flow run
that is not a subflow.

A child forked from a process that sends run logs (e.g. a `multiprocessing` pool with the 'fork'
start method, called from a task) cannot use the parent's connection, but what its code logs
about the parent's runs is still theirs: the child hands each such line to the parent over a
socket the parent made before the fork (`ForkRelay`), and the parent's shipper sends it.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from stateward.exceptions import InvalidArgument, NotFound
from stateward.runs import MAX_LOG_MESSAGE, MAX_LOGGER_NAME, LogEntry

log = logging.getLogger("stateward")

DEFAULT_BUFFER = 10_000  # lines waiting to be sent, at most
BATCH = 500  # lines in one call, at most
INTERVAL = 0.5  # seconds between two sends
_RUN_IDS = "stateward_run_ids"  # the LogRecord attribute naming the run: (flow run, task run)


def buffer_size() -> int:
    """STATEWARD_LOGS_BUFFER: the most lines waiting to be sent (10,000)."""
    return max(1, int(os.environ.get("STATEWARD_LOGS_BUFFER") or DEFAULT_BUFFER))


def fit_message(text: str) -> str:
    """A line's text as the server stores it: one over MAX_LOG_MESSAGE characters keeps its
    beginning and says how long it was (the server refused it, and with it every line sent in
    the same call)."""
    if len(text) <= MAX_LOG_MESSAGE:
        return text
    note = f" [cut: the line had {len(text):,} characters]"
    return text[: MAX_LOG_MESSAGE - len(note)] + note


def run_extra(flow_run_id: str, task_run_id: str) -> dict[str, tuple[str, str]]:
    """The `extra` of a log call about a run: its line is sent to the server."""
    return {_RUN_IDS: (flow_run_id, task_run_id)}


def run_ids(record: logging.LogRecord) -> tuple[str, str] | None:
    """The (flow run id, task run id) a record was logged about, or None."""
    return getattr(record, _RUN_IDS, None)


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


def sendable(text: str) -> str:
    """`text` as UTF-8 can hold it: a lone surrogate (a file name decoded with
    'surrogateescape', say) is written as its escape, `\\udcff`. Such text cannot be sent
    (gRPC and SQLite take UTF-8): a batch holding it failed at each try, and the lines behind
    it waited for ever."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


class RunLogHandler(logging.Handler):
    """Hands the lines logged about a run (those with its ids) to `add`: the shipper's, or in
    a forked child the relay's to its parent."""

    def __init__(self, add: Callable[[LogEntry], None]) -> None:
        super().__init__()
        self.add = add

    def emit(self, record: logging.LogRecord) -> None:
        ids = run_ids(record)
        if ids is None:
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                shown = record.exc_text or logging.Formatter().formatException(record.exc_info)
                message = f"{message}\n{shown}"
            self.add(
                LogEntry(
                    flow_run_id=ids[0],
                    task_run_id=ids[1],
                    timestamp=datetime.fromtimestamp(record.created, UTC),
                    level=record.levelno,
                    logger=sendable(record.name)[:MAX_LOGGER_NAME],
                    message=fit_message(sendable(message)),
                )
            )
        except Exception:  # logging must never fail a run
            self.handleError(record)


RELAY_DATAGRAM = 200_000  # bytes of one line handed over by a forked child, at most
RELAY_WAIT = 5.0  # seconds a forked child waits for room in the socket before dropping a line
# Characters of a message kept when its line is over RELAY_DATAGRAM (half as many, and so on,
# while their JSON still is).
_RELAY_CUT = 50_000


class ForkRelay:
    """A datagram socket pair made by a process that sends run logs, just before it forks: its
    forked children (and theirs) send the lines they log about its runs on one end, one line a
    datagram (never mixed with another child's), and a thread of the parent puts those of the
    other end into the parent's shipper. A line sent before the child hands back its result
    is in the parent's socket when the parent reads that result: `take_waiting` (each flush)
    gets it into the shipper."""

    def __init__(self, shipper: LogShipper) -> None:
        self.shipper = shipper
        self.inbox, self.outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A child waits a bounded time when the parent's socket is full, then drops the line.
        self.outbox.settimeout(RELAY_WAIT)
        self.inbox.setblocking(False)
        self._taking = threading.Lock()  # one reader at a time: lines keep their order
        self.sending = False  # this process is a forked child: it sends, the parent takes
        self.owner = os.getpid()  # the process that takes (a grandchild's is not its parent)
        self.owner_gone = False  # found gone by a send: later lines are not tried
        self.dropped = 0
        threading.Thread(target=self._take, name="stateward-fork-logs", daemon=True).start()

    def _take(self) -> None:
        waiting = select.poll()
        waiting.register(self.inbox, select.POLLIN)
        while True:
            waiting.poll()
            self.take_waiting()

    def take_waiting(self) -> None:
        """Put the lines waiting in the socket into the shipper (never blocks for new ones)."""
        with self._taking:
            while True:
                try:
                    data = self.inbox.recv(RELAY_DATAGRAM + 1024)
                except (BlockingIOError, OSError):
                    return
                try:
                    flow_run_id, task_run_id, created, level, name, message = json.loads(data)
                    entry = LogEntry(
                        flow_run_id=flow_run_id,
                        task_run_id=task_run_id,
                        timestamp=datetime.fromtimestamp(created, UTC),
                        level=level,
                        logger=name,
                        message=message,
                    )
                except (ValueError, TypeError) as error:  # not one of ours: nothing to send
                    log.warning("a forked child sent a run log line that is not one: %s", error)
                    continue
                self.shipper.add(entry)

    def in_child(self) -> None:
        """In a forked child: stop taking (the parent takes), start sending."""
        if not self.sending:
            self.sending = True
            self.inbox.close()

    def send(self, entry: LogEntry) -> None:
        """Hand a line to the parent (in a forked child). Waits at most RELAY_WAIT seconds for
        room; a line that cannot be handed over is dropped and counted, with a warning on the
        child's own logging (the console), never an exception."""
        line = [
            entry.flow_run_id,
            entry.task_run_id,
            entry.timestamp.timestamp() if entry.timestamp else time.time(),
            entry.level,
            entry.logger,
            entry.message,
        ]
        data = json.dumps(line, ensure_ascii=False).encode()
        kept = _RELAY_CUT
        while len(data) > RELAY_DATAGRAM and kept:  # JSON escapes a control character in 6 bytes
            cut = len(entry.message) - kept
            line[5] = f"{entry.message[:kept]} [cut: {cut} characters more]"
            data = json.dumps(line, ensure_ascii=False).encode()
            kept //= 2
        if self.owner_gone:
            self.dropped += 1
            return
        try:
            self.outbox.send(data)
        except OSError as error:  # full for RELAY_WAIT seconds, or the taker is gone
            self.dropped += 1
            if isinstance(error, ConnectionError) or error.errno == errno.ENOTCONN:
                # Said once: every later line would be dropped the same way, at once.
                self.owner_gone = True
                log.warning(
                    "process %d, which ran the runs this forked child logs about, is gone: "
                    "the child's run log lines are not stored (they stay on its console)",
                    self.owner,
                )
            elif self.dropped & (self.dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th...
                log.warning(
                    "dropped %d run log line(s) of this forked child so far: process %d, which "
                    "ran its runs, did not take them (%s)",
                    self.dropped,
                    self.owner,
                    error,
                )


_shipper: LogShipper | None = None
_relay: ForkRelay | None = None
_install_lock = threading.Lock()


def _open_relay() -> None:
    """Before a fork: a process that sends run logs opens the relay its children will use."""
    global _relay
    if _shipper is not None and _relay is None:
        try:
            _relay = ForkRelay(_shipper)
        except (OSError, RuntimeError) as error:  # no socket or thread to spare: console only
            log.warning("run log lines of forked children stay on their console: %s", error)


def _forget_in_child() -> None:
    """In a forked child: the parent's shipper sends with the parent's client, from a thread
    that did not come along, and its lock may have been held at the fork; its handler goes.
    What the child logs about runs goes to the parent through the relay, when the parent had
    one (it had a shipper); the parent's waiting lines stay the parent's to send."""
    global _shipper, _install_lock
    stateward_log = logging.getLogger("stateward")
    for handler in list(stateward_log.handlers):
        if isinstance(handler, RunLogHandler) and (
            (_shipper is not None and handler.add == _shipper.add)
            or (_relay is not None and handler.add == _relay.send)
        ):
            stateward_log.removeHandler(handler)
    if _relay is not None:
        _relay.in_child()
        stateward_log.addHandler(RunLogHandler(_relay.send))
    _shipper = None
    _install_lock = threading.Lock()


os.register_at_fork(before=_open_relay, after_in_child=_forget_in_child)


def install(send: Callable[[Sequence[LogEntry]], object]) -> LogShipper:
    """Start sending run logs with `send` (once per process); returns the shipper."""
    global _shipper, _relay
    with _install_lock:
        if _shipper is None:
            if _relay is not None:  # a forked child's own runs: their lines go their own way
                stateward_log = logging.getLogger("stateward")
                for handler in list(stateward_log.handlers):
                    if isinstance(handler, RunLogHandler) and handler.add == _relay.send:
                        stateward_log.removeHandler(handler)
                _relay = None
            _shipper = LogShipper(send, buffer_size())
            logging.getLogger("stateward").addHandler(RunLogHandler(_shipper.add))
            atexit.register(flush, 3.0)
        return _shipper


def flush(timeout: float = 2.0) -> None:
    """Send what waits (at most `timeout` seconds), e.g. when a flow run ends; at once when
    the server is away (the lines keep waiting in the buffer). Lines forked children handed
    over are among what waits."""
    if _shipper is not None and not _shipper.failing:
        if _relay is not None and not _relay.sending:
            _relay.take_waiting()
        _shipper.flush(timeout)
