"""The SQLite backend: the embedded default, shared by the processes of one machine."""

from stateward_service.store.sqlite.reader import StoreReader
from stateward_service.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from stateward_service.store.sqlite.store import Store

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store", "StoreReader", "migrate"]
