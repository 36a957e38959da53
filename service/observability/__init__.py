"""What the server tells its operators: Prometheus metrics, JSON log lines, Triton's statistics,
each HTTP exchange's record (request id, metrics, log line) and whether the gRPC processes serve."""

from prometheus_client import values

from service.observability import process

if values.ValueClass is not values.MutexValue:  # multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
    # Before any metric exists (they are all made in this package): prometheus_client asks its process
    # identifier before every sample it writes, to notice a fork; ours answers without a system call.
    values.ValueClass = values.MultiProcessValue(process.current)
