"""How the simulator's messages reach the broker: all devices over one connection (a service
login that may publish to every device topic: benchmarks, brokers without device logins), or
each device over its own connection with its own login, as real devices connect.

Both use paho directly, serviced by hand between publishes in the one thread that publishes, and
keep at most ``window`` QoS 1 messages unacknowledged (paho reuses message ids and stalls past
65,535 outstanding). One selector serves every device connection: 20 or 200 devices take no
thread of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import selectors
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetgate_tools.simulated_fleet import Message
from gateway.settings import MqttAddress, SettingsError
from gateway.waiting import backoff_delay

logger = logging.getLogger(__name__)

DEFAULT_WINDOW: Final = 1000
TLS_PORT: Final = 8883
_KEEPALIVE_S: Final = 30
_RETRY_CAP_S: Final = 5.0  # reconnects after a dropped connection
_REFUSED_RETRY_CAP_S: Final = 30.0  # a device the broker refused asks again this rarely
_MISC_INTERVAL_S: Final = 1.0  # keepalives and reconnects are looked after this often
_ANSWER_WAIT_S: Final = 10.0  # a CONNECT the broker has not answered by then is sent again


class PublishError(Exception):
    """The broker could not be reached or did not accept the connection."""


@dataclasses.dataclass(slots=True)
class Stats:
    """What a run did; ``acked`` counts PUBACKs received from the broker."""

    sent: int = 0
    acked: int = 0
    readings: int = 0
    errors: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"sent {self.sent:,}  acked {self.acked:,}  readings {self.readings:,}  "
            f"rate {rate:,.0f} msg/s  errors {self.errors}  ({self.elapsed_s:.1f} s)"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Broker:
    """Where to publish: the address (with the login of its URL, if any) and, for TLS, the
    context every connection shares (None: plain MQTT)."""

    address: MqttAddress
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None) -> Broker:
        """``mqtt://[user:pass@]host[:port]`` (port 1883), or ``mqtts://...`` (TLS 1.2 or
        later, port 8883) with the broker's certificate checked against ``ca_file`` (else the
        system's CAs) and its host name."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "mqtts":
            if ca_file:
                raise SettingsError("--ca-file is for a TLS broker: give an mqtts:// URL")
            return cls(MqttAddress.parse(url))
        plain = MqttAddress.parse(urllib.parse.urlunsplit(parts._replace(scheme="mqtt")))
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"cannot read the CA file {ca_file}: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return cls(dataclasses.replace(plain, port=parts.port or TLS_PORT), context)


class _Connection:
    """One paho client, its login, and what the broker said to it."""

    def __init__(
        self,
        broker: Broker,
        login: tuple[str, str] | None,
        client_id: str,
        window: int,
        stats: Stats,
    ) -> None:
        self.broker = broker
        self.stats = stats  # shared by the connections of one publisher
        self.username = login[0] if login else broker.address.username
        self.connected = False
        self.closing = False
        self.refused: str | None = None  # the broker's reason, once it refused this login
        self.drops = 0  # connections lost after being accepted
        self.sent = 0
        self.acked = 0
        self.retry_at = 0.0
        self.attempt = 0
        self.fd = -1  # of its socket, while one is open
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        username, password = login or (broker.address.username, broker.address.password)
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls is not None:
            self.client.tls_set_context(broker.tls)
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        else:
            self.connected, self.refused, self.attempt = True, None, 0

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        if self.connected and not self.closing:
            self.drops += 1
        self.connected = False
        self.retry_at = time.monotonic() + backoff_delay(self.attempt, self.retry_cap_s)
        self.attempt += 1

    def _on_publish(self, _c: Any, _u: Any, _mid: int, _reason: Any, _p: Any) -> None:
        self.acked += 1
        self.stats.acked += 1

    @property
    def retry_cap_s(self) -> float:
        return _REFUSED_RETRY_CAP_S if self.refused else _RETRY_CAP_S

    def open(self) -> None:
        """TCP (and the TLS handshake), then CONNECT; the broker's answer comes later."""
        address = self.broker.address
        self.retry_at = time.monotonic() + _ANSWER_WAIT_S  # unless the broker answers first
        try:
            self.client.connect(address.host, address.port, keepalive=_KEEPALIVE_S)
        except OSError as exc:  # TLS errors too (ssl.SSLError is an OSError)
            raise PublishError(f"cannot reach {address.host}:{address.port}: {exc}") from None

    def reopen(self) -> None:
        """Connect again (paho sends what was not acknowledged once the broker accepts)."""
        try:
            self.open()
        except PublishError:
            self._on_disconnect(None, None, None, None, None)

    def publish(self, message: Message) -> None:
        self.client.publish(message.topic, message.payload, qos=1)  # kept if disconnected
        self.sent += 1

    def read(self) -> None:
        """Everything the socket holds, including what TLS has decrypted but select cannot
        see."""
        client = self.client
        while client.loop_read() == mqtt.MQTT_ERR_SUCCESS:
            sock = client.socket()
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return

    def disconnect(self) -> None:
        self.closing = True
        self.client.disconnect()


class Publisher:
    """Every device over one connection: a login that may publish to all their topics, or
    none on a broker that lets anyone in. Messages published while disconnected are kept by
    paho and sent again after the reconnect."""

    def __init__(
        self, address: MqttAddress | Broker, client_id: str, window: int = DEFAULT_WINDOW
    ) -> None:
        self.broker = address if isinstance(address, Broker) else Broker(address)
        self.address = self.broker.address
        self.window = window
        self.stats = Stats()
        self._connection = _Connection(self.broker, None, client_id, window, self.stats)
        self._client = self._connection.client

    def connect(self, timeout_s: float = 10.0) -> None:
        self._connection.open()
        deadline = time.monotonic() + timeout_s
        while not self._connection.connected:
            refused = self._connection.refused
            if refused or time.monotonic() > deadline:
                raise PublishError(f"broker did not accept the connection: {refused}")
            self._client.loop(0.05)

    def publish(self, message: Message) -> None:
        """Publish at QoS 1, first waiting while the window is full."""
        while self.outstanding >= self.window:
            self.service(0.05)
        self._connection.publish(message)
        self.stats.sent += 1
        self.stats.readings += message.readings
        if self.stats.sent % 64 == 0:
            self.service(0.0)

    @property
    def outstanding(self) -> int:
        return self.stats.sent - self.stats.acked

    def service(self, timeout_s: float) -> None:
        """Read PUBACKs and keep the connection alive; reconnect if it dropped."""
        result = self._client.loop(timeout_s)
        self.stats.errors += self._connection.drops
        self._connection.drops = 0
        if result == mqtt.MQTT_ERR_SUCCESS:
            return
        time.sleep(min(0.5, max(timeout_s, 0.05)))
        try:
            self._client.reconnect()
        except OSError:
            self.stats.errors += 1

    def drain(self, timeout_s: float) -> bool:
        """Wait for the outstanding acknowledgements; True if all came."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding > 0 and time.monotonic() < deadline:
            self.service(0.05)
        return self.outstanding == 0

    def disconnect(self) -> None:
        self._connection.disconnect()
        self._client.loop(0.1)


class DevicePublishers:
    """Each device over its own connection, logged in as itself: username ``meter/{id}`` or
    ``vehicle/{id}``, which the broker also makes its client id, and which may publish to its
    own topic (``fleet/`` and the username) only. At most ``window`` messages unacknowledged
    over all of them. A device the broker refuses (a wrong secret, a disabled device) has its
    messages dropped and counted as errors, and asks again every half a minute or so."""

    def __init__(
        self, broker: Broker, logins: Mapping[str, str], window: int = DEFAULT_WINDOW
    ) -> None:
        self.broker = broker
        self.window = window
        self.stats = Stats()
        self._logins = dict(logins)
        self._selector = selectors.DefaultSelector()
        self._connections = {username: self._new(username) for username in self._logins}
        self._discarded = 0  # unacknowledged on a connection the broker then refused
        self._next_misc = 0.0

    def _new(self, username: str) -> _Connection:
        # The client id is the username: what use_username_as_clientid makes it anyway.
        login = (username, self._logins[username])
        connection = _Connection(self.broker, login, username, self.window, self.stats)
        selector = self._selector

        # Registered by descriptor: a socket paho has closed no longer has one.
        def opened(_client: Any, _userdata: Any, sock: Any) -> None:
            connection.fd = sock.fileno()
            selector.register(connection.fd, selectors.EVENT_READ, connection)

        def closing(_client: Any, _userdata: Any, _sock: Any) -> None:
            with contextlib.suppress(KeyError):  # also once the selector is closed
                selector.unregister(connection.fd)

        connection.client.on_socket_open = opened
        connection.client.on_socket_close = closing
        return connection

    def connect(self, timeout_s: float = 20.0) -> list[str]:
        """Connect every device. One refused at first asks again until ``timeout_s`` (a device
        registered a moment ago is let in once broker sync has reloaded the broker). Returns
        the usernames still refused then; if the broker took none, raises PublishError."""
        for connection in self._connections.values():
            connection.open()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.connected for c in self._connections.values()):
                return []
            self.service(0.05)
        waiting = sorted(u for u, c in self._connections.items() if not c.connected)
        if len(waiting) == len(self._connections):
            first = self._connections[waiting[0]]
            raise PublishError(
                f"the broker accepted none of the {len(waiting)} device logins "
                f"({waiting[0]}: {first.refused or 'no answer'})"
            )
        return waiting

    def publish(self, message: Message) -> None:
        """Publish at QoS 1 on the device's own connection, first waiting while the window is
        full; a refused device's message is dropped."""
        connection = self._connections[message.topic.removeprefix("fleet/")]
        if connection.refused:
            self.stats.errors += 1
            return
        while self.outstanding >= self.window:
            self.service(0.05)
        connection.publish(message)
        self.stats.sent += 1
        self.stats.readings += message.readings
        if self.stats.sent % 64 == 0:
            self.service(0.0)

    @property
    def outstanding(self) -> int:
        return self.stats.sent - self.stats.acked - self._discarded

    def service(self, timeout_s: float) -> None:
        """Write what publishing could not, read PUBACKs; about once a second also send
        keepalives and reconnect what dropped."""
        for connection in self._connections.values():
            if connection.client.want_write():
                connection.client.loop_write()
        for key, _events in self._selector.select(timeout_s):
            key.data.read()
        now = time.monotonic()
        if now < self._next_misc:
            return
        self._next_misc = now + _MISC_INTERVAL_S
        for username, connection in list(self._connections.items()):
            self.stats.errors += connection.drops
            connection.drops = 0
            if connection.connected:
                connection.client.loop_misc()
            elif connection.refused and connection.sent:
                self._replace(username, connection)
            elif now >= connection.retry_at:
                connection.reopen()

    def _replace(self, username: str, refused: _Connection) -> None:
        """A fresh client for a refused device: what the old one kept for it is dropped."""
        lost = refused.sent - refused.acked
        logger.warning(
            "the broker refused %s (%s): its readings are dropped until it is let in again",
            username,
            refused.refused,
        )
        self.stats.errors += lost
        self._discarded += lost
        replacement = self._new(username)
        replacement.refused, replacement.retry_at = refused.refused, refused.retry_at
        replacement.attempt = refused.attempt
        self._connections[username] = replacement

    def drain(self, timeout_s: float) -> bool:
        """Wait for the outstanding acknowledgements; True if all came."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding > 0 and time.monotonic() < deadline:
            self.service(0.05)
        return self.outstanding == 0

    def disconnect(self) -> None:
        """Say goodbye on every connection, and wait (a second at most) for the broker to
        close them."""
        for connection in self._connections.values():
            if connection.connected:
                connection.disconnect()
        deadline = time.monotonic() + 1.0
        while self._selector.get_map() and time.monotonic() < deadline:
            self.service(0.05)
        self._selector.close()
