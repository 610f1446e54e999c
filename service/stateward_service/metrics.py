"""Prometheus metrics of one server, on a registry of its own: calls by method and status with
their latency, transitions by state type, stream subscribers (and those reading the log because
they fell behind), loop sweeps, and the database's size on disk.

A server of several workers (`--workers`) is scraped at its parent, which adds up the workers'
metrics with prometheus_client's multiprocess mode (each worker writes its values to files in
PROMETHEUS_MULTIPROC_DIR, set by the parent): there a worker's gauges and loop sweeps, which
that mode cannot ask for when scraped, are written every `REFRESH_SECONDS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from stateward.runs import Transition

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _LoopRuns(Collector):
    def __init__(self, runs: Callable[[], dict[str, int]]) -> None:
        self._runs = runs

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "stateward_loop_runs", "Sweeps done by each of the server's loops", labels=["loop"]
        )
        for name, count in sorted(self._runs().items()):
            family.add_metric([name], count)
        yield family


# How often a worker of several writes its gauges and loop sweeps for its parent's scrape.
REFRESH_SECONDS = 1.0


class ServerMetrics:
    """With `shared`, this process is a worker of several (see the module's docstring): its
    parent serves the metrics, and `refresh()` writes what is read from callbacks."""

    def __init__(
        self,
        database_bytes: Callable[[], int],
        subscribers: Callable[[], int],
        lagging: Callable[[], int],
        loop_runs: Callable[[], dict[str, int]],
        *,
        shared: bool = False,
    ) -> None:
        self.shared = shared
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "stateward_rpc_requests",
            "Calls answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "stateward_rpc_duration_seconds",
            "Time to answer a call (a stream: its whole life), by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.transitions = Counter(
            "stateward_transitions",
            "Transitions written, by the type of the new state",
            ["state_type"],
            registry=self.registry,
        )
        self._gauges = [
            (
                Gauge(
                    "stateward_stream_subscribers",
                    "WatchTransitions streams open now",
                    registry=self.registry,
                    multiprocess_mode="livesum",
                ),
                subscribers,
            ),
            (
                Gauge(
                    "stateward_stream_subscribers_lagging",
                    "Streams reading the log now because they fell behind the in-memory buffer",
                    registry=self.registry,
                    multiprocess_mode="livesum",
                ),
                lagging,
            ),
            (
                Gauge(
                    "stateward_database_bytes",
                    "Size of the SQLite database on disk (its write-ahead log included)",
                    registry=self.registry,
                    multiprocess_mode="livemax",
                ),
                database_bytes,
            ),
        ]
        self._loop_runs = loop_runs
        if shared:
            self._sweeps = Counter(
                "stateward_loop_runs",
                "Sweeps done by each of the server's loops",
                ["loop"],
                registry=self.registry,
            )
            self._swept: dict[str, int] = {}
        else:
            for gauge, source in self._gauges:
                gauge.set_function(source)
            self.registry.register(_LoopRuns(loop_runs))

    def refresh(self) -> None:
        """A worker of several: write the gauges' values and the sweeps since the last
        refresh, for the parent's scrape."""
        for gauge, source in self._gauges:
            gauge.set(source())
        for name, count in self._loop_runs().items():
            if count > self._swept.get(name, 0):
                self._sweeps.labels(name).inc(count - self._swept.get(name, 0))
                self._swept[name] = count

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        name = method.rsplit("/", 1)[-1]
        self.calls.labels(name, code).inc()
        self.latency.labels(name, code).observe(seconds)

    def count_transitions(self, transitions: Sequence[Transition]) -> None:
        for transition in transitions:
            self.transitions.labels(transition.to_state.type.name).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)


def serve_shared(host: str, port: int) -> None:
    """In the parent of several workers: serve the sum of their metrics (what they wrote to
    PROMETHEUS_MULTIPROC_DIR) on `host`:`port`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
