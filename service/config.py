"""Settings from the environment (12-factor), validated once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from model.repository import DEFAULT_ROOT
from service.repository.version_policy import VersionPolicy


def usable_cores() -> int:
    """Cores this process may run on (respects CPU sets, e.g. ``docker run --cpuset-cpus``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class Settings(BaseModel):
    """Service settings; every field can be set by the environment variable of its upper-case name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("0.0.0.0", min_length=1, description="an address or name; IPv6 with or without brackets")
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535, description="the Open Inference Protocol over gRPC; 0: off")
    grpc_workers: int | None = Field(None, ge=1, le=64, description="gRPC server processes; default 1 while "
                                     "WORKERS <= 2, else WORKERS (python -m service decides)")
    grpc_threads: int = Field(1, ge=1, le=64, description="inferences running at once per gRPC process")
    grpc_max_calls: int = Field(64, ge=1, le=4096, description="calls a gRPC process holds at once; past "
                                "that RESOURCE_EXHAUSTED")
    workers: int = Field(default_factory=usable_cores, ge=1, le=64)
    model_dir: Path = DEFAULT_ROOT
    max_batch: int = Field(1024, ge=1, le=65536)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=2**31 - 1)  # gRPC's message limit is a C int
    body_buffer_bytes: int | None = Field(None, ge=1024, description="large request bodies a worker reads at once, "
                                          "in bytes (service/http_server/request_body.py); default 2 x MAX_BODY_BYTES")
    log_level: str = Field("info", pattern="^(debug|info|warning|error|critical)$")
    gradcheck_max_batch: int = Field(64, ge=1)
    gradcheck_max_samples: int = Field(100, ge=1)
    gradcheck_full_max_params: int = Field(20_000, ge=1)
    gradcheck_max_cost: float = Field(1e10, gt=0, description="estimated multiply-adds of one gradcheck")
    gradcheck_concurrency: int | None = Field(None, ge=1, description="gradchecks and explanations at once; "
                                              "default WORKERS - 1")
    explain_max_batch: int = Field(64, ge=1)
    explain_max_steps: int = Field(1024, ge=1)
    explain_max_samples: int = Field(256, ge=1)
    explain_max_cost: float = Field(1e10, gt=0, description="estimated multiply-adds of one explanation")
    graceful_timeout: int = Field(30, ge=1)
    worker_class: str = Field("service.http_server.worker.BufferingGeventWorker", pattern=r"^[A-Za-z0-9_.]+$",
                              description="gunicorn worker class; others only for the benchmark's comparison")
    threads: int = Field(1, ge=1, le=256, description="threads per worker (gthread only)")
    version_policy: str = Field("latest:1", description="latest, latest:N, all or specific:V1,V2")
    model_poll_seconds: float = Field(5.0, ge=0, description="rescan the repository this often; 0: never")
    model_settle_seconds: float = Field(2.0, ge=0, description="a weights file this recently modified waits")
    admin_token: SecretStr | None = Field(None, description="bearer token of the repository API; none: API off")
    state_dir: Path | None = Field(None, description="where workers share repository API state")
    keepalive: int = Field(5, ge=1, le=300)
    worker_connections: int = Field(1000, ge=10, le=100_000, description="open connections per worker")
    request_timeout: int = Field(10, ge=1, le=600)
    batching: bool = Field(True, description="merge concurrent requests into one forward pass (gunicorn worker)")
    grpc_batching: bool | None = Field(None, description="merge concurrent gRPC calls into one forward pass (the gRPC "
                                       "process's thread batcher); default BATCHING")
    max_queue_delay_microseconds: int = Field(0, ge=0, le=1_000_000,
                                              description="a batch may wait this long to grow; 0: opportunistic")
    preferred_batch_size: str = Field("", pattern=r"^ *(?:[0-9]{1,9} *(?:, *[0-9]{1,9} *)*,? *)?$",  # "8 16": no "816"
                                      description="comma-separated sizes that end a queue delay early")
    capture_dir: Path | None = Field(None, description="record sampled inferences and feedback here "
                                     "(docs/feedback-loop.md); none: capture and POST /feedback off")
    capture_sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="share of inference requests recorded")
    capture_max_bytes: int = Field(1 << 30, ge=64 * 1024, description="disk budget of CAPTURE_DIR, all processes")
    capture_queue: int = Field(1024, ge=1, le=1_000_000, description="records a process holds before writing; "
                               "past that they are dropped (and counted)")
    feedback_token: SecretStr | None = Field(None, description="bearer token POST /feedback requires; none: open")
    drift_window: int = Field(1000, ge=0, le=1_000_000, description="recent samples per model version the drift "
                              "score averages (per process); 0: off")
    max_queue_size: int = Field(0, ge=0, le=1_000_000, description="inference requests that may wait for their "
                                "forward pass in one process; one more is refused at once with a 503 (0: no bound)")
    default_timeout_microseconds: int = Field(0, ge=0, le=3_600_000_000, description="a request's deadline when it "
                                              "sets none (or a longer one); past it, not computed: a 504 (0: none)")
    shadow_queue: int = Field(4096, ge=1, le=1_000_000, description="rows a process holds for comparison with "
                              "a rollout's shadow or primary (docs/rollouts.md); past that they are dropped (counted)")

    def preferred_batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({int(v) for v in self.preferred_batch_size.split(",") if v.strip() and int(v)}))

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return value.removeprefix("[").removesuffix("]")  # as getaddrinfo takes it: bind_address adds them

    def bind_address(self, port: int) -> str:
        """``host:port`` for a listener, an IPv6 address in brackets (``HOST=::`` made ``:::8000``)."""
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        return str(VersionPolicy.parse(value))

    @model_validator(mode="after")
    def _budget_takes_a_body(self) -> Settings:
        if self.body_buffer_bytes is not None and self.body_buffer_bytes < self.max_body_bytes:
            raise ValueError(f"BODY_BUFFER_BYTES={self.body_buffer_bytes} is smaller than MAX_BODY_BYTES="
                             f"{self.max_body_bytes}: one largest body must fit")
        if self.grpc_port == self.port:
            raise ValueError(f"GRPC_PORT={self.grpc_port} is PORT too: give gRPC a port of its own (0 turns it off)")
        return self

    @property
    def grpc_batches(self) -> bool:
        """Whether the gRPC processes batch: ``GRPC_BATCHING``, else as ``BATCHING`` (off turns off both)."""
        return self.batching if self.grpc_batching is None else self.grpc_batching

    @property
    def body_budget(self) -> int:
        return self.body_buffer_bytes or 2 * self.max_body_bytes

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(name.upper())
            if raw not in (None, ""):
                values[name] = raw.lower() if name == "log_level" else raw
        values.update(overrides)
        return cls(**values)


def settings_error(error: ValidationError) -> str:
    """An operator's message for settings that do not validate: each variable by its name and what is wrong,
    never its value (a token may be among them) and never a traceback."""
    lines = []
    for e in error.errors():
        name = str(e["loc"][0]).upper() if e["loc"] else ""
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {name}: {message}" if name else f"  {message}")
    return "Error: the settings are not valid:\n" + "\n".join(lines)

