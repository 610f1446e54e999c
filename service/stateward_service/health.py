"""The standard gRPC health service (`grpc.health.v1.Health`): Check, Watch and List. The asyncio
servicer of grpcio-health-checking has no List; this one answers it from the statuses it was set."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, Any] = {}

    async def set(self, service: str, status: Any) -> None:
        """Set `service`'s status ("" is the whole server); watchers see the change."""
        self._statuses[service] = status
        await super().set(service, status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every service's status, as set so far."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )
