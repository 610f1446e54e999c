"""The PostgreSQL backend: several server replicas on one database (`--db postgresql://...`).
Needs the `postgres` extra (psycopg 3 and psycopg_pool)."""

from stateward_service.store.postgres.reader import PostgresReader
from stateward_service.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from stateward_service.store.postgres.store import PostgresStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresReader", "PostgresStore", "migrate"]
