"""The gateway: take messages from the broker, commit them in batches, then acknowledge them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg

from gateway.alerts import AlertEvaluator, AlertPublisher
from gateway.batch import Batch, BatchLimits, Received
from gateway.broker import ALERTS_PREFIX, Broker
from gateway.database import Partitions, open_pool
from gateway.dead_letter_cap import DeadLetterCap
from gateway.heartbeat import GatewayState, Heartbeat
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics, retry_reason
from gateway.monitoring import HealthReport, serve_monitoring
from gateway.mqtt_frames import Delivery
from gateway.readings import Decoded, Limits, decode_message
from gateway.replicas import Replicas
from gateway.schema import apply_schema
from gateway.settings import Settings
from gateway.waiting import backoff_delay, sleep_unless
from gateway.writer import BatchWriter, WriteResult

logger = logging.getLogger(__name__)

_POLL_S = 0.005  # while a batch fills: how often to take what has arrived


class ShutdownTimeoutError(Exception):
    """Work taken before SIGTERM could not be committed in time; the broker will redeliver it."""


class TaskDiedError(Exception):
    """A background task of the gateway failed or ended while the gateway was running."""


@dataclasses.dataclass(slots=True)
class _Session:
    """One broker session this replica owns: its consumer, and its batches not yet committed."""

    broker: Broker
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    subscribed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    committed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    uncommitted: int = 0  # batches handed to the writer, not yet committed and acknowledged
    task: asyncio.Task[None] | None = None

    async def all_committed(self) -> None:
        while self.uncommitted:
            self.committed.clear()
            await self.committed.wait()


class Gateway:
    """One gateway process's work, run by :meth:`run` until ``stop`` is set. It is one replica
    of those sharing the deployment's GATEWAY_SESSIONS broker sessions (gateway/replicas.py):
    it consumes those it owns, and judges alerts while it leads."""

    def __init__(self, settings: Settings, stop: asyncio.Event, metrics: Metrics | None = None):
        self.settings = settings
        self.stop = stop
        self.metrics = metrics or Metrics()
        # The bytes budget: a quarter waiting in the client, a quarter in each of three batches
        # (filling, queued, committing); the readings budget: a third in each batch.
        self.replica = settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"
        self._brokers = {
            number: Broker(
                settings,
                max_queued_bytes=settings.max_bytes_in_flight // 4,
                session=number,
                sessions=settings.gateway_sessions,
            )
            for number in range(settings.gateway_sessions)
        }
        self._sessions: dict[int, _Session] = {}  # those this replica owns
        self._connections = itertools.count(1)  # numbers every broker connection, all sessions
        self._broker_of: dict[int, Broker] = {}  # connection number -> its session's broker
        self._tasks: asyncio.TaskGroup | None = None
        self._alert_stop = asyncio.Event()
        self._alert_tasks: list[asyncio.Task[None]] = []
        self._batch_limits = BatchLimits(
            messages=settings.batch_size,
            items=max(1, settings.max_readings_in_flight // 3),
            payload_bytes=max(1, settings.max_bytes_in_flight // 4),
        )
        self._dead_letter_cap = DeadLetterCap(
            settings.dead_letters_per_device, settings.dead_letters_per_minute
        )
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
        self.writer: BatchWriter | None = None
        self.failure: TaskDiedError | None = None  # why the gateway stopped by itself
        self._run_task: asyncio.Task[object] | None = None
        self._startup_error = "starting: the schema is not checked yet"  # until the writer runs
        self._readings_waiting = 0  # taken from the broker, not yet committed
        self.metrics.broker_connected.set_function(lambda: float(self._broker_connected()))
        self.metrics.readings_waiting.set_function(lambda: self._readings_waiting)
        self.replicas = Replicas(
            settings.database_url,
            settings.client_id,
            self.replica,
            sessions=settings.gateway_sessions,
            takeover_s=settings.replica_takeover_s,
            retry_max_delay_s=settings.retry_max_delay_s,
            take=self._take_session,
            release=self._release_session,
            lead=self._lead,
            registry=self.metrics.registry,
        )
        # One row per replica; a lone gateway keeps the row of its client id.
        self._alone = alone = settings.gateway_sessions == 1 and not settings.replica_name
        self.heartbeat = Heartbeat(
            settings.database_url,
            settings.client_id if alone else f"{settings.client_id}/{self.replica}",
            settings.heartbeat_interval_s,
            self._heartbeat_state,
            self.metrics.heartbeat_failures.inc,
        )

    async def run(self) -> None:
        """Run until ``stop`` is set. If a background task fails or ends on its own, the
        gateway stops as on SIGTERM (what was taken is committed) and raises TaskDiedError:
        never alive but idle."""
        async with contextlib.AsyncExitStack() as resources:
            # Before the database: /health/live answers (and /health says why it waits) while
            # the database is down at start.
            if self.settings.metrics_port:
                await resources.enter_async_context(
                    serve_monitoring(
                        self.settings.metrics_host,
                        self.settings.metrics_port,
                        self.metrics.registry,
                        self.health,
                    )
                )
            await self._wait_for_database()
            if self.stop.is_set():
                return
            await self._run_tasks()
        logger.info("gateway stopped")
        if self.failure is not None:
            raise self.failure

    @property
    def broker(self) -> Broker:
        """Session 0's broker client (the only one with GATEWAY_SESSIONS=1)."""
        return self._brokers[0]

    def health(self) -> HealthReport:
        return HealthReport(
            broker_connected=self._broker_connected(),
            database_error=self._write_error() if self.writer else self._startup_error,
            heartbeat_error=self.heartbeat.error,
            backlog=self._readings_waiting,
            replica="" if self._alone else self.replica,
            sessions=sorted(self._sessions),
            leader=self.replicas.leader,
            replicas=self.replicas.census.sessions,
        )

    def _broker_connected(self) -> bool:
        """Every session it owns subscribed; a replica owning none (a standby) has nothing to
        connect, and counts as connected while it takes part in the census."""
        if not self._sessions:
            return self.replica in self.replicas.census.sessions
        return all(
            session.subscribed.is_set() and session.broker.connected
            for session in self._sessions.values()
        )

    def _write_error(self) -> str | None:
        failing = self.writer.failing if self.writer else None
        return None if failing is None else f"{type(failing).__name__}: {failing}".strip()

    def _heartbeat_state(self) -> GatewayState:
        return GatewayState(
            self._broker_connected(),
            self._readings_waiting,
            self._write_error(),
            sorted(self._sessions),
            self.replicas.leader,
        )

    def _retrying(self, error: Exception) -> None:
        self.metrics.database_retries.labels(reason=retry_reason(error)).inc()

    async def _run_tasks(self) -> None:
        self._run_task = asyncio.current_task()
        alerts = self.settings.alerts_enabled
        pool_size = self.settings.db_pool_size + (2 if alerts else 0)
        # A connection returned within the last second is not checked again (a round trip per
        # batch); after a database restart, a batch on a dead one fails once and is retried.
        async with open_pool(self.settings.database_url, pool_size, fresh_s=1.0) as pool:
            partitions = Partitions(pool)
            self.writer = writer = BatchWriter(
                pool,
                partitions,
                self.settings.retry_max_delay_s,
                self._acknowledge,
                on_permanent_error=self._repair_schema,
                open_enrolment=self.settings.enrolment == "open",
                on_retry=self._retrying,
            )
            if alerts:
                self.alerts = AlertEvaluator(pool, self.settings, self.metrics.alerts_changed)
                self.alert_publisher = AlertPublisher(pool, self.settings, self.alerts.changed)
            work: dict[str, Awaitable[None]] = {
                "replicas": self._replicate(),
                "write": self._write(writer),
                "partitions": self._maintain_partitions(partitions),
                # retention and compaction, on a connection of their own
                "lifecycle": Lifecycle(self.settings, self.metrics.lifecycle, partitions).run(
                    self.stop
                ),
                "stats": self._log_stats(),
                "heartbeat": self.heartbeat.run(self.stop),
            }
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    for name, job in work.items():
                        tasks.create_task(self._supervised(name, job), name=name)
                    tasks.create_task(self._enforce_shutdown_deadline(), name="deadline")
            except* ShutdownTimeoutError:
                logger.error(  # noqa: TRY400 - the reason is the deadline, no traceback helps
                    "shutdown deadline passed with a batch uncommitted; it was not "
                    "acknowledged, so the broker will deliver it again"
                )

    async def _supervised(
        self, name: str, job: Awaitable[None], done: asyncio.Event | None = None
    ) -> None:
        """Run one background task; if it fails, is cancelled or ends while the gateway runs
        (and, for a session's or the leader's task, before ``done`` is set), record why and
        stop the gateway, so that the others drain and the process exits."""
        try:
            await job
        except asyncio.CancelledError:
            if self.stop.is_set() or self._cancelled_from_outside():
                raise  # shutting down, or the gateway itself is cancelled
            self._fail(name, TaskDiedError(f"task {name!r} was cancelled while running"))
        except Exception as exc:
            logger.exception("task %r failed", name)
            self._fail(name, TaskDiedError(f"task {name!r} failed: {type(exc).__name__}: {exc}"))
        else:
            if not self.stop.is_set() and not (done and done.is_set()):
                self._fail(name, TaskDiedError(f"task {name!r} ended while the gateway ran"))

    def _cancelled_from_outside(self) -> bool:
        return self._run_task is not None and self._run_task.cancelling() > 0

    def _fail(self, name: str, error: TaskDiedError) -> None:
        logger.error("%s; stopping the gateway (what was taken is committed first)", error)
        if self.failure is None:
            self.failure = error
        self.stop.set()

    async def _repair_schema(self) -> None:
        self.metrics.permanent_errors.inc()
        await apply_schema(self.settings.database_url, force=True)
        logger.info("schema re-applied")

    async def _wait_for_database(self) -> None:
        """Apply the schema, waiting for the database to come up if it is not yet."""
        attempt = 0
        while not self.stop.is_set():
            try:
                await apply_schema(self.settings.database_url)
            except psycopg.OperationalError as exc:
                logger.warning("database unreachable, retrying: %s", exc)
                self._startup_error = f"waiting for the database: {' '.join(str(exc).split())}"
                self.metrics.database_retries.labels(reason="unreachable").inc()
            except psycopg.Error as exc:
                logger.error(  # noqa: TRY400 - the database's message says it all
                    "could not apply the schema (%s: %s); retrying", type(exc).__name__, exc
                )
                self._startup_error = f"could not apply the schema: {type(exc).__name__}: {exc}"
                self.metrics.database_retries.labels(reason="schema").inc()
            else:
                logger.info("schema applied")
                return
            await sleep_unless(self.stop, backoff_delay(attempt, self.settings.retry_max_delay_s))
            attempt += 1

    async def _replicate(self) -> None:
        """Own sessions and lead as the replicas decide; on stop, hand everything over (each
        session committed and acknowledged first), then end the writer."""
        try:
            await self.replicas.run(self.stop)
        finally:
            await self._drain_writer()
            self._drained.set()

    async def _take_session(self, number: int) -> None:
        assert self._tasks is not None
        session = _Session(self._brokers[number])
        self._sessions[number] = session
        session.task = self._tasks.create_task(
            self._run_session(number, session), name=f"session-{number}"
        )

    async def _release_session(self, number: int) -> None:
        session = self._sessions.get(number)
        if session is None:
            return
        session.stop.set()
        if session.task is not None:
            await asyncio.wait([session.task])
        del self._sessions[number]

    async def _run_session(self, number: int, session: _Session) -> None:
        await self._supervised(f"session-{number}", self._consume(session), session.stop)

    async def _lead(self, leading: bool) -> None:
        """Run the alert evaluator and publisher while this replica leads, so that alerts are
        judged and published once, whatever the number of replicas."""
        if not (self.alerts and self.alert_publisher):
            return
        if leading:
            assert self._tasks is not None
            self._alert_stop = asyncio.Event()
            jobs = {
                "alert-rules": self.alerts.run(self._alert_stop),
                "alert-publisher": self.alert_publisher.run(self._alert_stop),
            }
            self._alert_tasks = [
                self._tasks.create_task(self._supervised(name, job, self._alert_stop), name=name)
                for name, job in jobs.items()
            ]
            return
        self._alert_stop.set()
        if self._alert_tasks:
            await asyncio.wait(self._alert_tasks)
        self._alert_tasks = []

    async def _consume(self, session: _Session) -> None:
        """Keep one session's broker connection, fill batches, hand them to the writer; on its
        stop, wait until they are committed and acknowledged, then disconnect."""
        broker = session.broker
        attempt = 0
        drained = False
        try:
            while not session.stop.is_set():
                try:
                    async with broker.client:
                        connection = next(self._connections)
                        self._broker_of[connection] = broker
                        broker.connected_to(connection)
                        await broker.subscribe()
                        logger.info(
                            "replica %r connected to mqtt://%s:%d as %r (session %d), "
                            "subscribed (QoS 1)",
                            self.replica,
                            self.settings.mqtt.host,
                            self.settings.mqtt.port,
                            broker.identifier,
                            broker.session,
                        )
                        session.subscribed.set()
                        self.subscribed.set()
                        attempt = 0
                        await self._fill_batches(session)
                        # Stopping: commit and acknowledge what was taken, then disconnect.
                        await session.all_committed()
                        drained = True
                except aiomqtt.MqttError as exc:
                    broker.disconnected()
                    self._unsubscribed(session)
                    delay = backoff_delay(attempt, self.settings.retry_max_delay_s)
                    logger.warning(
                        "session %d: broker connection lost or refused (%s); retrying in %.1f s",
                        broker.session,
                        exc,
                        delay,
                    )
                    attempt += 1
                    await sleep_unless(session.stop, delay)
            if not drained:  # stopped while disconnected: commit anyway, the acks must wait
                await session.all_committed()
        finally:
            broker.disconnected()
            self._unsubscribed(session)

    def _unsubscribed(self, session: _Session) -> None:
        session.subscribed.clear()
        if not any(other.subscribed.is_set() for other in self._sessions.values()):
            self.subscribed.clear()

    async def _drain_writer(self) -> None:
        await self._batches.put(None)
        await self._batches.join()

    async def _hand_to_writer(self, session: _Session, batch: Batch) -> None:
        session.uncommitted += 1
        await self._batches.put(batch)

    async def _fill_batches(self, session: _Session) -> None:
        broker = session.broker
        limits = self._batch_limits
        max_age_s = self.settings.batch_age_ms / 1000
        batch = Batch()
        stop_waiting = asyncio.ensure_future(session.stop.wait())
        try:
            while not session.stop.is_set():
                if not batch:
                    waiting = asyncio.ensure_future(broker.next_message())
                    done, _ = await asyncio.wait(
                        (waiting, stop_waiting), return_when=asyncio.FIRST_COMPLETED
                    )
                    if waiting not in done:
                        waiting.cancel()
                        break
                    first = waiting.result()  # raises MqttError on disconnect
                    self._take(broker, first, batch, datetime.now(UTC), time.monotonic())
                now, now_monotonic = datetime.now(UTC), time.monotonic()
                while not batch.is_full(limits) and (message := broker.take_ready()):
                    self._take(broker, message, batch, now, now_monotonic)
                if batch.is_full(limits) or batch.age_s(time.monotonic()) >= max_age_s:
                    await self._hand_to_writer(session, batch)
                    batch = Batch()
                elif broker.lost_connection():
                    raise aiomqtt.MqttError("connection lost while a batch was filling")
                else:
                    await asyncio.sleep(_POLL_S)
        finally:
            stop_waiting.cancel()
            if batch:  # written whatever happens; acknowledged only if still connected
                await self._hand_to_writer(session, batch)

    def _take(
        self,
        broker: Broker,
        message: Delivery,
        batch: Batch,
        now: datetime,
        now_monotonic: float,
    ) -> None:
        topic, payload = message.topic, message.payload
        if topic.startswith(ALERTS_PREFIX):  # our own output, not telemetry
            broker.ack(message.mid, message.qos, broker.connection)
            return
        decoded, suppressed = self._dead_letter_cap.admit(
            decode_message(topic, payload, now, self._limits), now
        )
        self._readings_waiting += _backlog(decoded)
        batch.add(
            Received(
                topic,
                payload,
                now,
                now_monotonic,
                message.mid,
                message.qos,
                broker.connection,
                decoded,
                suppressed,
            )
        )

    async def _write(self, writer: BatchWriter) -> None:
        while True:
            batch = await self._batches.get()
            try:
                if batch is None:
                    return
                await writer.write(batch)
                # Once the whole batch is in (a refused message is written as another batch).
                self._readings_waiting -= sum(_backlog(m.decoded) for m in batch.messages)
                self._committed(batch)
            finally:
                self._batches.task_done()

    def _committed(self, batch: Batch) -> None:
        """A session's batch is committed and acknowledged: its drain may be waiting for it."""
        broker = self._broker_of.get(batch.messages[0].connection) if batch.messages else None
        session = self._sessions.get(broker.session) if broker else None
        if session is not None and session.uncommitted:
            session.uncommitted -= 1
            session.committed.set()

    def _acknowledge(self, batch: Batch, result: WriteResult) -> None:
        now = time.monotonic()
        skipped = sum(
            not self._ack(message.mid, message.qos, message.connection)
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
            self.writer.last_commit_s if self.writer else 0.0,
            now - batch.messages[0].received_monotonic,
            skipped,
        )

    def _ack(self, mid: int, qos: int, connection: int) -> bool:
        broker = self._broker_of.get(connection)
        return broker is not None and broker.ack(mid, qos, connection)

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


def _backlog(decoded: Decoded) -> int:
    """What a message adds to the backlog: its readings and its dead letters."""
    return len(decoded.readings) + len(decoded.rejects)
