"""Server interceptors, one concern each, composed in `stateward_service.server`."""
