"""`stateward.exceptions`: the status codes, named and numbered as gRPC's, and the one table
between them and the client's exceptions."""

from __future__ import annotations

import grpc

from stateward import exceptions


def test_status_codes_are_grpcs_names_and_numbers():
    assert {code.name: code.value for code in exceptions.StatusCode} == {
        code.name: code.value[0] for code in grpc.StatusCode
    }


def test_each_rpc_error_maps_to_its_code_and_back():
    # One class per code; a subclass of one of those (CursorExpired) says more of that code.
    error_types = {
        cls for cls in vars(exceptions).values()
        if isinstance(cls, type) and cls.__base__ is exceptions.RpcError
    }  # fmt: skip
    assert set(exceptions.ERROR_TYPES.values()) == error_types
    expired = exceptions.CursorExpired("pruned", 17)
    assert isinstance(expired, exceptions.FailedPrecondition)
    assert expired.code == "FAILED_PRECONDITION" and expired.oldest_sequence == 17
    for code, error_type in exceptions.ERROR_TYPES.items():
        error = exceptions.error_for_status(code.value, "refused")
        assert type(error) is error_type and error.code == code.name == error_type.code
        assert str(error) == "refused"


def test_codes_without_an_exception_of_their_own_raise_rpc_error_with_the_name():
    error = exceptions.error_for_status(exceptions.StatusCode.UNAVAILABLE, "down")
    assert type(error) is exceptions.RpcError and error.code == "UNAVAILABLE"
    unknown = exceptions.error_for_status(99, "odd")
    assert type(unknown) is exceptions.RpcError and unknown.code == "UNKNOWN"
