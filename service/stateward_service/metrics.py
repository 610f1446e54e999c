"""Prometheus metrics of one server, on a registry of its own: calls by method and status with
their latency, transitions by state type, stream subscribers (and those reading the log because
they fell behind), loop sweeps, and the database's size on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
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


class ServerMetrics:
    def __init__(
        self,
        database_bytes: Callable[[], int],
        subscribers: Callable[[], int],
        lagging: Callable[[], int],
        loop_runs: Callable[[], dict[str, int]],
    ) -> None:
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
        Gauge(
            "stateward_stream_subscribers",
            "WatchTransitions streams open now",
            registry=self.registry,
        ).set_function(subscribers)
        Gauge(
            "stateward_stream_subscribers_lagging",
            "Streams reading the log now because they fell behind the in-memory buffer",
            registry=self.registry,
        ).set_function(lagging)
        Gauge(
            "stateward_database_bytes",
            "Size of the SQLite database on disk (its write-ahead log included)",
            registry=self.registry,
        ).set_function(database_bytes)
        self.registry.register(_LoopRuns(loop_runs))

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        name = method.rsplit("/", 1)[-1]
        self.calls.labels(name, code).inc()
        self.latency.labels(name, code).observe(seconds)

    def count_transitions(self, transitions: Sequence[Transition]) -> None:
        for transition in transitions:
            self.transitions.labels(transition.to_state.type.name).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
