"""The orchestration policy: pure rules, no I/O, no gRPC.

`engine` runs an ordered policy over one proposal; the other modules hold the rules, grouped by
what they protect; `policies` orders them; `bookkeeping` keeps a run's fields in step with its
history.
"""
