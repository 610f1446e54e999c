"""Reading a Server-Sent Events stream in tests: events parsed as the browser's EventSource
parses them, comment lines (heartbeats) kept apart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> Any:
        return json.loads("\n".join(self.data_lines))


class EventStream:
    """The events of one streaming response, read in order."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()
        self.comments: list[str] = []

    def next(self) -> Event:
        current = Event()
        for line in self.lines:
            if line == "":
                if current.data_lines or current.id is not None:
                    return current
                current = Event()
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    current.event = value
                elif name == "id":
                    current.id = value
                elif name == "data":
                    current.data_lines.append(value)
        raise EOFError("the stream ended")

    def hello(self) -> Event:
        event = self.next()
        assert event.event == "hello", event
        return event

    def transitions(self, count: int) -> list[Event]:
        found = [self.next() for _ in range(count)]
        assert all(event.event == "transition" for event in found), found
        return found

    def until_comments(self, count: int) -> list[str]:
        """Read until `count` comment lines came (only they come on an idle stream)."""
        while len(self.comments) < count:
            line = next(self.lines)
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
        return self.comments
