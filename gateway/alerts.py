"""Alert lifecycle: judge the rules, raise and clear alerts in the database, publish the changes.

Raises and clears are written with an outbox row in one transaction (and acknowledgements, by
the API); the publisher sends the outbox to ``fleet/alerts/{meter|vehicle}/{deviceId}/{rule}``
(QoS 1, retained while raised) and marks it. Evaluation runs beside ingestion, on its own
connection: a slow round delays alerts, never readings.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

import aiomqtt
import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.alert_messages import ALERT_EVENTS_CHANNEL, alert_message, alert_topic, describe
from gateway.alert_rules import CHECKS, Observation, Scope, parameters, worse
from gateway.broker import settle_disconnection
from gateway.settings import Settings
from gateway.waiting import backoff_delay, sleep_unless, wait_any

logger = logging.getLogger(__name__)

# The publisher also looks at the outbox this often: leftovers of a crash, another gateway's.
_OUTBOX_LOOK_S: Final = 5.0

_ACTIVE: Final = """
SELECT alert_id, device_kind, device_name, rule, value FROM alert
WHERE cleared_at IS NULL
  AND (%(names)s::text[] IS NULL OR device_name = ANY(%(names)s::text[]))
"""
_RAISE: Final = """
WITH raised AS (
    INSERT INTO alert (device_kind, device_name, rule, raised_at, value, threshold, message)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],
                         %s::double precision[], %s::double precision[], %s::text[])
    ON CONFLICT (device_kind, device_name, rule) WHERE cleared_at IS NULL DO NOTHING
    RETURNING alert_id, rule
), events AS (
    INSERT INTO alert_event (alert_id, state)
    SELECT alert_id, 'raised' FROM raised ORDER BY alert_id
)
SELECT rule FROM raised
"""
_WORSEN: Final = """
UPDATE alert a SET value = w.value
FROM unnest(%s::bigint[], %s::double precision[]) AS w(alert_id, value)
WHERE a.alert_id = w.alert_id AND a.cleared_at IS NULL
"""
_CLEAR: Final = """
WITH cleared AS (
    UPDATE alert a SET cleared_at = %s, clear_value = c.value
    FROM unnest(%s::bigint[], %s::double precision[]) AS c(alert_id, value)
    WHERE a.alert_id = c.alert_id AND a.cleared_at IS NULL
    RETURNING a.alert_id, a.rule
), events AS (
    INSERT INTO alert_event (alert_id, state)
    SELECT alert_id, 'cleared' FROM cleared ORDER BY alert_id
)
SELECT rule FROM cleared
"""
_UNPUBLISHED: Final = """
SELECT e.event_id, e.state AS event, a.alert_id, a.device_kind, a.device_name, a.rule, a.value,
       a.threshold, a.raised_at, a.cleared_at, a.clear_value, a.acknowledged_at,
       a.acknowledged_by, a.acknowledged_note, a.message
FROM alert_event e JOIN alert a USING (alert_id)
WHERE e.published_at IS NULL ORDER BY e.event_id LIMIT 500
"""
_MARK_PUBLISHED: Final = "UPDATE alert_event SET published_at = now() WHERE event_id = ANY(%s)"


class AlertEvaluator:
    """Judges the rules for the devices each committed batch touched, and for all devices on a
    timer; turns verdicts into raises and clears."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: Settings,
        counted: Callable[[str, list[str]], None] = lambda state, rules: None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._counted = counted  # told the rule of each alert raised or cleared, once committed
        self._meters: set[str] = set()
        self._vehicles: set[str] = set()
        self.touched = asyncio.Event()
        self.changed = asyncio.Event()  # set when a round raised or cleared something

    def devices_written(self, meters: Iterable[str], vehicles: Iterable[str]) -> None:
        """Called after each commit; cheap, never blocks ingestion."""
        self._meters.update(meters)
        self._vehicles.update(vehicles)
        self.touched.set()

    def _take(self) -> Scope:
        """The devices written since the last round, forgotten here: a commit from now on
        touches again."""
        scope = Scope(sorted(self._meters), sorted(self._vehicles))
        self._meters.clear()
        self._vehicles.clear()
        self.touched.clear()
        return scope

    async def run(self, stop: asyncio.Event) -> None:
        interval = self._settings.alert_check_interval_s
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while not stop.is_set():
            full = loop.time() >= next_full
            scope = self._take()
            try:
                if full:
                    await self.evaluate(Scope(None, None), time_driven=True)
                    next_full = loop.time() + interval
                elif scope.meters or scope.vehicles:
                    await self.evaluate(scope, time_driven=False)
            except (psycopg.Error, OSError) as exc:
                logger.warning("alert evaluation failed, retrying next round: %s", exc)
                next_full = loop.time() + min(interval, 1.0)  # a full round catches up
            await wait_any(max(0.0, next_full - loop.time()), stop, self.touched)
            # Reading-driven rounds run at most every ALERT_GATHER_S: under a flood each round
            # judges every device touched since the last one, so fewer rounds judge each
            # device fewer times.
            await sleep_unless(stop, self._settings.alert_gather_s)

    async def evaluate(
        self, scope: Scope, *, time_driven: bool, now: datetime | None = None
    ) -> int:
        """One round: observations, then raises, worsenings and clears in one transaction.
        Returns the number of alerts raised or cleared."""
        now = now or datetime.now(UTC)
        params = parameters(self._settings, scope, now)
        names = None if scope.meters is None else sorted({*scope.meters, *(scope.vehicles or [])})
        observations: list[Observation] = []
        async with self._pool.connection() as conn, conn.transaction():
            for check in CHECKS:
                if check.time_driven and not time_driven:
                    continue
                cur = await conn.execute(check.sql.encode(), params)
                for row in await cur.fetchall():
                    observations.extend(check.observe(row, self._settings))
            cur = await conn.execute(_ACTIVE.encode(), {"names": names})
            active = {
                (kind, name, rule): (alert_id, value)
                for alert_id, kind, name, rule, value in await cur.fetchall()
            }
            changed = await self._apply(conn, observations, active, now)
        for state, rules in changed.items():
            self._counted(state, rules)
        changes = sum(len(rules) for rules in changed.values())
        if changes:
            self.changed.set()
        return changes

    async def _apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        observations: list[Observation],
        active: dict[tuple[str, str, str], tuple[int, float]],
        now: datetime,
    ) -> dict[str, list[str]]:
        """The rules of the alerts raised and of those cleared, by state."""
        raises: list[Observation] = []
        worsened: list[tuple[int, float]] = []
        clears: list[tuple[int, float]] = []
        for obs in observations:
            current = active.get((obs.device_kind, obs.device_name, obs.rule))
            if obs.verdict == "raise" and current is None:
                raises.append(obs)
            elif (
                obs.verdict == "raise"
                and current is not None
                and worse(obs.rule, current[1], obs.value, self._settings, nominal=obs.nominal)
            ):
                worsened.append((current[0], obs.value))
            elif obs.verdict == "clear" and current is not None:
                clears.append((current[0], obs.value))
        changed: dict[str, list[str]] = {"raised": [], "cleared": []}
        if raises:
            cur = await conn.execute(
                _RAISE.encode(),
                (
                    [o.device_kind for o in raises],
                    [o.device_name for o in raises],
                    [o.rule for o in raises],
                    [now] * len(raises),
                    [o.value for o in raises],
                    [o.threshold for o in raises],
                    [
                        describe(o.rule, "raised", o.device_name, o.value, o.threshold)
                        for o in raises
                    ],
                ),
            )
            changed["raised"] = [rule for (rule,) in await cur.fetchall()]
        if worsened:
            await conn.execute(
                _WORSEN.encode(), ([w[0] for w in worsened], [w[1] for w in worsened])
            )
        if clears:
            cur = await conn.execute(
                _CLEAR.encode(), (now, [c[0] for c in clears], [c[1] for c in clears])
            )
            changed["cleared"] = [rule for (rule,) in await cur.fetchall()]
        if changed["raised"] or changed["cleared"]:
            logger.info(
                "alerts: %d raised, %d cleared", len(changed["raised"]), len(changed["cleared"])
            )
        return changed


class AlertPublisher:
    """Publishes the outbox in order on a connection of its own, then marks what the broker
    acknowledged. Retained while raised, so a late subscriber sees what is wrong right now.
    Woken by the evaluator's ``changed`` and by the API's notifications (acknowledgements)."""

    def __init__(
        self, pool: AsyncConnectionPool, settings: Settings, changed: asyncio.Event
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._changed = changed
        self._notified = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            listener = tasks.create_task(self._listen(), name="alert-outbox-notifications")
            try:
                await self._publish(stop)
            finally:
                listener.cancel()

    async def _publish(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            # A new client per connection: a reused aiomqtt 2.5 client can report itself
            # connected before the broker confirms, and paho sends a publish the broker
            # refused again at every reconnect.
            client = self._client()
            try:
                async with client:
                    attempt = 0
                    while not stop.is_set():
                        self._changed.clear()
                        self._notified.clear()
                        await self.publish_pending(client)
                        await wait_any(_OUTBOX_LOOK_S, stop, self._changed, self._notified)
            except (aiomqtt.MqttError, psycopg.Error, OSError) as exc:
                delay = backoff_delay(attempt, self._settings.retry_max_delay_s)
                attempt += 1
                logger.warning("alert publishing paused (%s); retrying in %.1f s", exc, delay)
                await sleep_unless(stop, delay)
            finally:
                # also when the connection dropped while there was nothing to publish
                settle_disconnection(client)

    async def _listen(self) -> None:
        """Until cancelled: wake the publisher whenever the API notifies ALERT_EVENTS_CHANNEL.
        While this cannot listen, the publisher still looks every _OUTBOX_LOOK_S."""
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._settings.database_url,
                    autocommit=True,
                    application_name=f"{self._settings.client_id}-alert-outbox",
                ) as conn:
                    await conn.execute(f"LISTEN {ALERT_EVENTS_CHANNEL}".encode())
                    attempt = 0
                    self._notified.set()  # what was added while not listening
                    async for _ in conn.notifies():
                        self._notified.set()
                problem = "notifications ended"
            except psycopg.Error as exc:
                problem = str(exc).strip() or type(exc).__name__
            delay = backoff_delay(attempt, self._settings.retry_max_delay_s)
            attempt += 1
            logger.warning(
                "not listening for alert outbox changes (%s); again in %.1f s", problem, delay
            )
            await asyncio.sleep(delay)

    def _client(self) -> aiomqtt.Client:
        mqtt = self._settings.mqtt_alerts or self._settings.mqtt
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password,
            identifier=f"{self._settings.client_id}-alerts-{uuid.uuid4().hex[:6]}",
        )

    async def publish_pending(self, client: aiomqtt.Client) -> None:
        while True:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(_UNPUBLISHED.encode())
                rows = await cur.fetchall()
            if not rows:
                return
            for row in rows:
                await _publish_event(client, row)
            async with self._pool.connection() as conn:
                await conn.execute(_MARK_PUBLISHED.encode(), ([row["event_id"] for row in rows],))


async def _publish_event(client: aiomqtt.Client, row: dict[str, Any]) -> None:
    """A raise (retained), an acknowledgement (the retained raise again, now acknowledged), or a
    clear (published, then the retained raise removed)."""
    cleared = row["event"] == "cleared"
    payload = alert_message(row, raised_only=not cleared)
    topic = alert_topic(row["device_kind"], row["device_name"], row["rule"])
    body = msgspec.json.encode(payload)
    if not cleared:
        await client.publish(topic, body, qos=1, retain=True)
    else:  # tell current subscribers, then remove the retained raise
        await client.publish(topic, body, qos=1, retain=False)
        await client.publish(topic, b"", qos=1, retain=True)
