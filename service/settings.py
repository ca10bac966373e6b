"""Every setting of the service, read from environment variables (prefix ``SERVICE_``)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_", frozen=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP API.")
    workers: int = Field(2, ge=1, le=64, description="Number of gunicorn worker processes.")
    model_dir: Path = Field(Path("models"), description="Folder with the ONNX models and metadata.json.")
    max_batch_rows: int = Field(1000, ge=1, description="Most rows accepted by /predict/batch.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; larger gets 413.")
    metrics_enabled: bool = Field(True, description="Record Prometheus metrics (benchmarks switch it off).")
    prediction_log_enabled: bool = Field(True, description="Write one JSON prediction log line a request.")
    log_file: Path | None = Field(None, description="Prediction log file; unset means stdout.")
    log_max_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Size at which the log file is rotated and gzip-compressed."
    )
    log_backup_count: int = Field(10, ge=1, description="How many compressed rotated log files are kept.")
    multiproc_dir: Path = Field(
        Path(".run/prometheus-multiproc"),
        description="Where gunicorn workers keep their metric files (emptied at start).",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port (from the gunicorn master) and not on the API port.",
    )
    max_requests: int = Field(
        0, ge=0, description="Recycle a worker after this many requests (0: never); jitter is 10%."
    )
