"""Server reflection that shows the docs: the contract's protos are served as `make proto`
wrote them into the descriptor set beside the generated code, comments included (so that
`grpcurl describe` shows them); the standard services' protos come from their modules.

grpc_reflection's own servicer rebuilds each file from its descriptor, which drops the comments;
this one answers the same requests from the files themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib.resources import files
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest as Request
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionResponse as Response


class DocumentedReflection(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """The v1alpha reflection service over the protos with their source info."""

    def __init__(self, service_names: Iterable[str]) -> None:
        """`service_names`: what ListServices answers. Raises OSError if the descriptor set is
        missing from the installation."""
        self.service_names = sorted(service_names)
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(
            files("stateward.v1").joinpath("descriptors.binpb").read_bytes()
        )
        self.files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self.pool = descriptor_pool.DescriptorPool()
        for file in descriptor_set.file:  # dependencies come first
            self._add(file)
        for module_file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
            if module_file.name not in self.files:
                self._add(_as_proto(module_file))

    def _add(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.pool.Add(file)
        self.files[file.name] = file

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[Request], context: Any
    ) -> AsyncIterator[Response]:
        async for request in request_iterator:
            yield self.answer(request)

    def answer(self, request: Request) -> Response:
        """The response to one reflection request."""
        which = request.WhichOneof("message_request")
        try:
            if which == "file_by_filename":
                return self._files(request, self.pool.FindFileByName(request.file_by_filename))
            if which == "file_containing_symbol":
                symbol = request.file_containing_symbol
                return self._files(request, self.pool.FindFileContainingSymbol(symbol))
            if which == "list_services":
                services = [reflection_pb2.ServiceResponse(name=n) for n in self.service_names]
                return Response(
                    original_request=request,
                    list_services_response=reflection_pb2.ListServiceResponse(service=services),
                )
            if which == "all_extension_numbers_of_type":
                message = self.pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                return Response(
                    original_request=request,
                    all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                        base_type_name=message.full_name
                    ),
                )
        except KeyError:
            return _error(request, grpc.StatusCode.NOT_FOUND)
        if which == "file_containing_extension":  # the contract declares no extensions
            return _error(request, grpc.StatusCode.NOT_FOUND)
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT)

    def _files(self, request: Request, file: FileDescriptor) -> Response:
        """`file` and every file it imports, directly or not, as the files say them."""
        names: list[str] = []
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name not in names:
                names.append(current.name)
                pending.extend(current.dependencies)
        serialized = [self.files[name].SerializeToString() for name in names]
        return Response(
            original_request=request,
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=serialized
            ),
        )


def _error(request: Request, code: grpc.StatusCode) -> Response:
    number, text = code.value
    return Response(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(error_code=number, error_message=text),
    )


def _as_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto
