"""The faust application and its declarations: topics and tables, in one place.

Settings come from ``PAYSTREAM_*`` at import time (a worker is one process with
one configuration). Every topic is declared with raw bytes: the Avro codec runs
in the agents, in batches, where a bad message can become a dead letter instead
of an exception inside faust's deserializer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
from faust.sensors import Monitor

from streams import topics as names
from streams.settings import Settings, load_settings

# RocksDB per partition: faust's defaults (2 GiB block cache, 64 MiB memtables)
# multiplied by 12 partitions would claim far more memory than a worker needs.
ROCKSDB_OPTIONS = {
    "driver": "rocksdict",
    "block_cache_size": 16 * 1024**2,
    "block_cache_compressed_size": 0,
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024**2,
}


class LeanMonitor(Monitor):
    """faust's Monitor without its per-event bookkeeping.

    The default Monitor updates counters, timestamps and per-stream lookups for every
    message and event, twice each; our agents batch, and keep their own counts
    (agents/pipeline.py BatchStats, shown by the worker's views). Commits, sends,
    rebalances and lag tracking still go through the Monitor unchanged.
    """

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None


def worker_dir(settings: Settings) -> Path:
    """Local RocksDB state of one worker (several workers may share a machine)."""
    return settings.state_dir / "workers" / f"{settings.app_id}-{settings.web_port}"


def create_app(settings: Settings) -> faust.App:
    worker_dir(settings).parent.mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{hostport.strip()}" for hostport in settings.brokers.split(",")]
    return faust.App(
        settings.app_id,
        broker=brokers,
        store="rocksdb://",
        datadir=str(worker_dir(settings)),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.web_port,
        canonical_url=f"http://127.0.0.1:{settings.web_port}",
        stream_buffer_maxsize=4 * settings.batch_size_max,
        # Each request's effects are flushed before its offset is acked (agents/pipeline.py),
        # so committing often costs little and shortens redelivery after a crash.
        broker_commit_interval=1.0,
        Monitor=LeanMonitor,
        # faust's 60 s default means a kill -9'd worker's partitions stall for a minute;
        # heartbeats go every 3 s, so 10 s still tolerates two lost heartbeats.
        broker_session_timeout=float(settings.group_session_timeout_s),
    )


settings = load_settings()
app = create_app(settings)


def _topic(name: str) -> faust.TopicT:
    return app.topic(settings.topic(name), key_type=bytes, value_type=bytes)


requests_topic = _topic(names.REQUESTS)
legs_topic = _topic(names.LEGS)
fx_rates_topic = _topic(names.FX_RATES)

accounts = app.Table(
    "accounts",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    options=dict(ROCKSDB_OPTIONS),
    help="One value per account: balances, holds, payments, idempotency records, positions.",
)
fx_rates = app.GlobalTable(
    "fx-rates",
    key_type=bytes,
    value_type=bytes,
    partitions=1,
    options=dict(ROCKSDB_OPTIONS),
    help="Latest rate per currency pair, copied from fx.rates by the fx agent; every worker "
    "reads the whole table.",
)
