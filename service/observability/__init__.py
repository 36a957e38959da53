"""What the server tells its operators: Prometheus metrics, JSON log lines, Triton's statistics,
each HTTP exchange's record (request id, metrics, log line) and whether the gRPC processes serve."""
