"""The Stateward server: the store, the orchestration policy, the servicer and its loops.

Layers, from the bottom: `rules` (pure policy) and `store` (SQLite) know nothing of each other or
of gRPC; `orchestrator` joins them; `api` speaks protobuf; `servicer`, `interceptors` and
`server` speak gRPC.
"""
