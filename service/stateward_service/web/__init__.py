"""The web view: a page listing runs and showing each one live, and the small JSON and
Server-Sent Events API it reads, served by uvicorn on the gRPC server's event loop.

Layers: `documents` turns the domain's records into JSON; `auth` checks the API key; `events`
streams transitions from the broadcaster; `app` assembles the Starlette application; `serving`
runs it. Every read and every action goes through the orchestrator, as the gRPC API's do.
"""

from stateward_service.web.app import create_app
from stateward_service.web.serving import WebServer

__all__ = ["WebServer", "create_app"]
