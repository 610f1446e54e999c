"""Stateward: run-state orchestration over gRPC."""

from stateward.states import State, StateType

__all__ = ["State", "StateType"]
