"""The gateway: take messages from the broker, commit them in batches, then acknowledge them."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
from prometheus_client import start_http_server

from gateway.alerts import AlertEvaluator, AlertPublisher
from gateway.batch import Batch, Received
from gateway.broker import ALERTS_PREFIX, Broker
from gateway.database import Partitions, apply_schema, open_pool
from gateway.metrics import Metrics
from gateway.readings import Limits, decode_message
from gateway.settings import Settings
from gateway.waiting import backoff_delay, sleep_unless
from gateway.writer import BatchWriter, WriteResult

logger = logging.getLogger(__name__)

_POLL_S = 0.005  # while a batch fills: how often to take what has arrived


class ShutdownTimeoutError(Exception):
    """Work taken before SIGTERM could not be committed in time; the broker will redeliver it."""


class Gateway:
    """One gateway process's work, run by :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: Settings, stop: asyncio.Event, metrics: Metrics | None = None):
        self.settings = settings
        self.stop = stop
        self.metrics = metrics or Metrics()
        self.broker = Broker(settings)
        self._limits = Limits(
            max_payload_bytes=settings.max_payload_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
            max_age=timedelta(days=settings.max_reading_age_days),
        )
        # One batch committing, one waiting: a slow database slows intake, not memory.
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        self._drained = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.alerts: AlertEvaluator | None = None
        self.alert_publisher: AlertPublisher | None = None

    async def run(self) -> None:
        await self._wait_for_database()
        if self.stop.is_set():
            return
        if self.settings.metrics_port:
            start_http_server(
                self.settings.metrics_port,
                self.settings.metrics_host,
                registry=self.metrics.registry,
            )
        alerts = self.settings.alerts_enabled
        pool_size = self.settings.db_pool_size + (2 if alerts else 0)
        async with open_pool(self.settings.database_url, pool_size) as pool:
            partitions = Partitions(pool)
            writer = BatchWriter(
                pool, partitions, self.settings.retry_max_delay_s, self._acknowledge
            )
            if alerts:
                self.alerts = AlertEvaluator(pool, self.settings)
                self.alert_publisher = AlertPublisher(pool, self.settings, self.alerts.changed)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._consume(), name="consume")
                    tasks.create_task(self._write(writer), name="write")
                    tasks.create_task(self._maintain_partitions(partitions), name="partitions")
                    tasks.create_task(self._log_stats(), name="stats")
                    tasks.create_task(self._enforce_shutdown_deadline(), name="deadline")
                    if self.alerts and self.alert_publisher:
                        tasks.create_task(self.alerts.run(self.stop), name="alert-rules")
                        tasks.create_task(
                            self.alert_publisher.run(self.stop), name="alert-publisher"
                        )
            except* ShutdownTimeoutError:
                logger.error(  # noqa: TRY400 - the reason is the deadline, no traceback helps
                    "shutdown deadline passed with a batch uncommitted; it was not "
                    "acknowledged, so the broker will deliver it again"
                )
        logger.info("gateway stopped")

    async def _wait_for_database(self) -> None:
        """Apply the schema, waiting for the database to come up if it is not yet."""
        attempt = 0
        while not self.stop.is_set():
            try:
                await apply_schema(self.settings.database_url)
            except psycopg.OperationalError as exc:
                logger.warning("database unreachable, retrying: %s", exc)
            else:
                logger.info("schema applied")
                return
            await sleep_unless(self.stop, backoff_delay(attempt, self.settings.retry_max_delay_s))
            attempt += 1

    async def _consume(self) -> None:
        """Keep a broker connection, fill batches, hand them to the writer; drain on stop."""
        attempt = 0
        connection = 0
        drained = False
        try:
            while not self.stop.is_set():
                try:
                    async with self.broker.client:
                        connection += 1
                        self.broker.connected_to(connection)
                        await self.broker.subscribe()
                        logger.info(
                            "connected to mqtt://%s:%d as %r, subscribed (QoS 1)",
                            self.settings.mqtt.host,
                            self.settings.mqtt.port,
                            self.settings.client_id,
                        )
                        self.subscribed.set()
                        attempt = 0
                        await self._fill_batches()
                        # Stopping: commit and acknowledge what was taken, then disconnect.
                        await self._drain_writer()
                        drained = True
                except aiomqtt.MqttError as exc:
                    self.broker.disconnected()
                    self.subscribed.clear()
                    delay = backoff_delay(attempt, self.settings.retry_max_delay_s)
                    logger.warning(
                        "broker connection lost or refused (%s); retrying in %.1f s", exc, delay
                    )
                    attempt += 1
                    await sleep_unless(self.stop, delay)
            if not drained:  # stopped while disconnected: commit anyway, the acks must wait
                await self._drain_writer()
        finally:
            self.broker.disconnected()
            self._drained.set()

    async def _drain_writer(self) -> None:
        await self._batches.put(None)
        await self._batches.join()

    async def _fill_batches(self) -> None:
        size = self.settings.batch_size
        max_age_s = self.settings.batch_age_ms / 1000
        batch = Batch()
        stop_waiting = asyncio.ensure_future(self.stop.wait())
        try:
            while not self.stop.is_set():
                if not batch:
                    waiting = asyncio.ensure_future(self.broker.next_message())
                    done, _ = await asyncio.wait(
                        (waiting, stop_waiting), return_when=asyncio.FIRST_COMPLETED
                    )
                    if waiting not in done:
                        waiting.cancel()
                        break
                    self._take([waiting.result()], batch)  # raises MqttError on disconnect
                self._take(self.broker.take_ready(size - len(batch)), batch)
                if batch.is_full(size) or batch.age_s(time.monotonic()) >= max_age_s:
                    await self._batches.put(batch)
                    batch = Batch()
                elif self.broker.lost_connection():
                    raise aiomqtt.MqttError("connection lost while a batch was filling")
                else:
                    await asyncio.sleep(_POLL_S)
        finally:
            stop_waiting.cancel()
            if batch:  # written whatever happens; acknowledged only if still connected
                await self._batches.put(batch)

    def _take(self, messages: list[aiomqtt.Message], batch: Batch) -> None:
        now = datetime.now(UTC)
        now_monotonic = time.monotonic()
        for message in messages:
            topic = message.topic.value
            if topic.startswith(ALERTS_PREFIX):  # our own output, not telemetry
                self.broker.ack(message.mid, message.qos, self.broker.connection)
                continue
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else bytes(str(message.payload), "utf-8")
            )
            decoded = decode_message(topic, payload, now, self._limits)
            batch.add(
                Received(
                    topic,
                    payload,
                    now,
                    now_monotonic,
                    message.mid,
                    message.qos,
                    self.broker.connection,
                    decoded,
                )
            )

    async def _write(self, writer: BatchWriter) -> None:
        while True:
            batch = await self._batches.get()
            try:
                if batch is None:
                    return
                await writer.write(batch)
            finally:
                self._batches.task_done()

    def _acknowledge(self, batch: Batch, result: WriteResult) -> None:
        now = time.monotonic()
        skipped = sum(
            not self.broker.ack(message.mid, message.qos, message.connection)
            for message in batch.messages
        )
        if self.alerts is not None:
            meters: list[str] = []
            vehicles: list[str] = []
            for message in batch.messages:
                decoded = message.decoded
                if decoded.readings and decoded.device_id is not None:
                    (meters if decoded.device_kind == "meter" else vehicles).append(
                        decoded.device_id
                    )
            self.alerts.devices_written(meters, vehicles)
        self.metrics.committed(
            result,
            now - batch.started_monotonic,
            now - batch.messages[0].received_monotonic,
            skipped,
        )

    async def _maintain_partitions(self, partitions: Partitions) -> None:
        while True:
            try:
                await partitions.ensure_ahead(self.settings.partition_days_ahead)
            except Exception as exc:
                logger.warning("could not create partitions ahead: %s", exc)
            if await sleep_unless(self.stop, 3600):
                return

    async def _log_stats(self) -> None:
        while not await sleep_unless(self.stop, self.settings.stats_interval_s):
            self.metrics.summary.log_and_reset()
        self.metrics.summary.log_and_reset()

    async def _enforce_shutdown_deadline(self) -> None:
        await self.stop.wait()
        try:
            await asyncio.wait_for(self._drained.wait(), self.settings.shutdown_timeout_s)
        except TimeoutError:
            raise ShutdownTimeoutError from None
