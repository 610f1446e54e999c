"""The Stateward server: the store, the orchestration policy, the gRPC API and the loops.

Layers, from the bottom: `rules` (pure policy) and `store` (SQLite) know nothing of each other or
of gRPC; `orchestrator` joins them and is the only door to the store; `broadcaster` fans the
committed transitions out and `loops` sweep, both through the orchestrator; `grpc_api` turns
protobuf requests into orchestrator calls (and says what may run on the event loop);
`interceptors` and `server` speak gRPC; `cli` is `stateward server start`, with `settings`.
"""
