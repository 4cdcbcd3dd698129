"""The one broker connection of the API: kept up by a reconnecting loop, used to publish
readings at QoS 1 and to wait for the broker's acknowledgement.

Each connection gets a new ``aiomqtt.Client``. aiomqtt 2.5.1 lets a client be entered again, but
after a connection the broker dropped, ``__aexit__`` returns early and leaves the finished
``_connected`` future in place: the next ``__aenter__`` returns before the broker's CONNACK, and
paho sends the unacknowledged QoS 1 messages of the old connection again, so a publish the broker
refused (a topic with a newline) made it drop every reconnection in turn; measured, HTTP
ingestion answered 503 for more than 90 s while the loop believed it was connected. A client
used once has no such state to carry over.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Final

import aiomqtt

from gateway.broker import settle_disconnection
from gateway.settings import MqttAddress
from gateway.waiting import backoff_delay
from http_api.errors import BrokerUnavailableError

logger = logging.getLogger(__name__)

_RETRY_MAX_DELAY_S: Final = 2.0  # reconnect at least this often while the broker is away


class _Connection:
    """One connected client, and a future resolved once it is no longer usable."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.problem = ""

    def close(self, problem: str) -> None:
        if not self.lost.done():
            self.problem = problem
            self.lost.set_result(None)


class Publisher:
    def __init__(self, address: MqttAddress, timeout_s: float) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self.connected = asyncio.Event()

    def _new_client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            hostname=self._address.host,
            port=self._address.port,
            username=self._address.username,
            password=self._address.password,
            identifier=f"fleetgate-api-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=30,
            timeout=self._timeout_s,
        )

    async def run(self) -> None:
        """Stay connected until cancelled; reconnect with growing, capped, random delays. Any
        error ends only the connection it happened on: the next one starts from a new client."""
        attempt = 0
        while True:
            client: aiomqtt.Client | None = None
            try:
                client = self._new_client()
                async with client:
                    connection = _Connection(client)
                    self._connection = connection
                    self.connected.set()
                    attempt = 0
                    logger.info(
                        "connected to the broker at %s:%d", self._address.host, self._address.port
                    )
                    try:
                        await _until_lost(connection)
                    finally:
                        self._disconnected()
                problem = connection.problem
            except aiomqtt.MqttError as exc:
                problem = _describe(exc)
            except Exception as exc:  # anything else from aiomqtt or paho: a fresh client heals it
                logger.exception("unexpected error in %r; reconnecting", self)
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                self._disconnected()
                if client is not None:
                    settle_disconnection(client)
            delay = backoff_delay(attempt, _RETRY_MAX_DELAY_S)
            attempt += 1
            logger.warning(
                "broker connection in %r lost or refused: %s; retrying in %.2f s",
                self,
                problem,
                delay,
            )
            await asyncio.sleep(delay)

    def _disconnected(self) -> None:
        """From now on, publish refuses at once and /health says the broker is not reachable."""
        self.connected.clear()
        if self._connection is not None:
            self._connection.close("disconnected")
            self._connection = None

    async def publish(self, topic: str, payload: bytes) -> None:
        """Return once the broker acknowledged (PUBACK); BrokerUnavailableError otherwise, at
        once if the connection drops meanwhile. No acknowledgement within the timeout ends the
        connection too: a broker that stopped answering is reconnected to, not waited on."""
        connection = self._connection
        if connection is None or connection.lost.done():
            raise BrokerUnavailableError("the broker is not reachable; try again later")
        # The timeout is ours (asyncio.wait), not aiomqtt's, so that a lost connection can
        # end the wait early.
        sending = asyncio.ensure_future(
            connection.client.publish(topic, payload, qos=1, timeout=math.inf)
        )
        try:
            done, _ = await asyncio.wait(
                (sending, connection.lost),
                timeout=self._timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not sending.done():
                sending.cancel()
        if sending in done:
            exc = sending.exception()
            if exc is None:
                return
            if isinstance(exc, aiomqtt.MqttError):
                raise BrokerUnavailableError(f"the broker did not acknowledge: {exc}") from None
            raise exc
        if connection.lost.done():
            raise BrokerUnavailableError(
                f"the broker connection was lost before it acknowledged: {connection.problem}"
            )
        connection.close(f"no acknowledgement within {self._timeout_s:g} s")
        raise BrokerUnavailableError(
            f"the broker did not acknowledge within {self._timeout_s:g} s; reconnecting"
        )

    def __repr__(self) -> str:
        return f"<Publisher {self._address.host}:{self._address.port}>"


async def _until_lost(connection: _Connection) -> None:
    """Return when ``connection`` was closed on our side; raise ``MqttError`` when the broker
    dropped it (aiomqtt tells of a disconnection through its message iterator)."""
    iterating = asyncio.ensure_future(_drain(connection.client))
    try:
        await asyncio.wait((iterating, connection.lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        iterating.cancel()
        await asyncio.wait((iterating,))  # unlike awaiting it, never swallows our own cancel
    if not iterating.cancelled() and (dropped := iterating.exception()) is not None:
        connection.close(_describe(dropped))
        raise dropped


async def _drain(client: aiomqtt.Client) -> None:
    async for _ in client.messages:  # nothing is subscribed; ends only by MqttError
        pass


def _describe(exc: BaseException) -> str:
    """``exc`` and what caused it, on one line: "Disconnected ...: [code:7] The connection..."."""
    text = str(exc) or type(exc).__name__
    if exc.__cause__ is not None:
        text = f"{text}: {exc.__cause__}"
    return text
