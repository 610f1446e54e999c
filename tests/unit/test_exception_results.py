"""A failed run's exception is stored even when a library makes exceptions pickle their chain
(tblib's pickling support, which importing `distributed` installs) and a link of the chain
cannot be pickled."""

from __future__ import annotations

import threading

import distributed  # noqa: F401  (installs tblib's pickling of exception chains)

from stateward._results import decode, encode_exception


class HoldsALock(Exception):
    """As a gRPC error does: an attribute that cannot be pickled."""

    def __init__(self) -> None:
        super().__init__("the call failed")
        self.lock = threading.RLock()


def test_an_exception_whose_chain_cannot_be_pickled_is_stored_without_it() -> None:
    try:
        try:
            raise HoldsALock()
        except HoldsALock:
            raise ValueError("the run's own error") from None
    except ValueError as error:
        caught = error
    try:
        try:
            raise HoldsALock()
        except HoldsALock:
            raise KeyError("implicit context")  # noqa: B904 (the implicit context is the case)
    except KeyError as error:
        implicit = error

    for raised in (caught, implicit):
        data = encode_exception(raised)
        assert data is not None, raised
        restored = decode(data)
        assert type(restored) is type(raised) and restored.args == raised.args
        assert restored.__context__ is None
        assert isinstance(raised.__context__, HoldsALock)  # the raised one keeps its chain
