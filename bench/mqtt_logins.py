"""Many devices logging in to the broker at once, each on a TCP connection of its own: raw MQTT
3.1.1 CONNECT packets on non-blocking sockets under one epoll loop, so that 10,000 clients cost
this process little beside the broker (asyncio's transports cost about four times as much CPU
per connection here, and the client, not the broker, became what was measured)."""

from __future__ import annotations

import dataclasses
import errno
import heapq
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Mapping

from gateway.shared_subscriptions import variable_integer

ACCEPTED = 0  # CONNACK return code; 4 is a bad username or password, 5 not authorised
_CONNACK = 0x20
_DISCONNECT = b"\xe0\x00"
_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"
KEEPALIVE_S = 900  # longer than any phase: the broker must not drop an idle device meanwhile


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(username: str, password: str) -> bytes:
    """CONNECT: MQTT 3.1.1, clean session, a username and a password. The client id is the
    username, as the broker makes it anyway (use_username_as_clientid)."""
    flags = 0b1100_0010  # username, password, clean session
    body = (
        _string("MQTT")
        + bytes([4, flags])
        + KEEPALIVE_S.to_bytes(2, "big")
        + _string(username)
        + _string(username)
        + _string(password)
    )
    return b"\x10" + variable_integer(len(body)) + body


@dataclasses.dataclass(slots=True)
class Session:
    """A device the broker let in, and when (time.monotonic)."""

    username: str
    connected_at: float
    attempts: int
    sock: socket.socket

    @property
    def disconnected(self) -> bool:
        """The broker has closed the connection (a peek sees the end, or an error)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


@dataclasses.dataclass(slots=True)
class _Attempt:
    username: str
    packet: bytes
    sock: socket.socket
    sent: bool = False
    received: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Storm:
    """Logins started together at ``started``; their sessions, open until ``log_out``."""

    started: float
    sessions: list[Session]

    @property
    def last_s(self) -> float:
        return max(s.connected_at for s in self.sessions) - self.started

    @property
    def attempts(self) -> int:
        return sum(s.attempts for s in self.sessions)

    def quantile_s(self, share: float) -> float:
        """Time from the start to the CONNACK of this share of the devices (0.5: the median)."""
        times = sorted(s.connected_at - self.started for s in self.sessions)
        if len(times) < 2:
            return times[0]
        return statistics.quantiles(times, n=1000, method="inclusive")[round(share * 1000) - 1]


class _Loop:
    """Connections in progress under one selector; refused or failed ones tried again later."""

    def __init__(self, port: int, logins: Mapping[str, str], retry_s: float) -> None:
        self.address = ("127.0.0.1", port)
        self.logins = logins
        self.retry_s = retry_s
        self.selector = selectors.DefaultSelector()
        self.due: list[tuple[float, str]] = []  # (when, username): a heap of connects to make
        self.attempts = dict.fromkeys(logins, 0)
        self.sessions: list[Session] = []
        self.open = 0

    def connect(self, username: str) -> None:
        self.attempts[username] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.retry(username)
            return
        packet = connect_packet(username, self.logins[username])
        self.selector.register(sock, selectors.EVENT_WRITE, _Attempt(username, packet, sock))
        self.open += 1

    def retry(self, username: str) -> None:
        heapq.heappush(self.due, (time.monotonic() + self.retry_s, username))

    def end(self, attempt: _Attempt, accepted: bool) -> None:
        self.selector.unregister(attempt.sock)
        self.open -= 1
        if accepted:
            session = Session(
                attempt.username, time.monotonic(), self.attempts[attempt.username], attempt.sock
            )
            self.sessions.append(session)
        else:
            attempt.sock.close()
            self.retry(attempt.username)

    def ready(self, attempt: _Attempt) -> None:
        if not attempt.sent:
            self._send(attempt)
            return
        try:
            data = attempt.sock.recv(4 - len(attempt.received))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.end(attempt, accepted=False)  # closed before a CONNACK
            return
        attempt.received += data
        if len(attempt.received) == 4:
            connack = attempt.received
            self.end(attempt, accepted=connack[0] == _CONNACK and connack[3] == ACCEPTED)

    def _send(self, attempt: _Attempt) -> None:
        """Connected (or failed to): CONNECT, then wait for the CONNACK."""
        if attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.end(attempt, accepted=False)
            return
        try:
            attempt.sock.send(attempt.packet)  # ~100 bytes: the socket's buffer takes them
        except OSError:
            self.end(attempt, accepted=False)
            return
        attempt.sent = True
        self.selector.modify(attempt.sock, selectors.EVENT_READ, attempt)

    def run(self, deadline: float) -> None:
        while self.due or self.open:
            now = time.monotonic()
            if now > deadline:
                missing = len(self.logins) - len(self.sessions)
                raise TimeoutError(f"{missing:,} devices were not let in in time")
            while self.due and self.due[0][0] <= now:
                self.connect(heapq.heappop(self.due)[1])
            wait = min(max(self.due[0][0] - now, 0.0), 1.0) if self.due else 1.0
            for key, _ in self.selector.select(wait):
                self.ready(key.data)
        self.selector.close()


def storm(port: int, logins: Mapping[str, str], timeout_s: float, retry_s: float = 0.1) -> Storm:
    """Every login at once, each on its own connection, each tried again ``retry_s`` after a
    refusal (a login the broker does not know yet) or a connection error, until let in."""
    loop = _Loop(port, logins, retry_s)
    started = time.monotonic()
    loop.due = [(started, username) for username in logins]
    heapq.heapify(loop.due)
    loop.run(started + timeout_s)
    return Storm(started, loop.sessions)


def log_in(port: int, username: str, password: str, timeout_s: float, retry_s: float) -> Session:
    """One device, tried every ``retry_s`` until let in."""
    [session] = storm(port, {username: password}, timeout_s, retry_s).sessions
    return session


def log_out(sessions: list[Session], timeout_s: float = 60) -> None:
    """DISCONNECT each, and wait until the broker has closed every connection, so that it
    holds none of them when this returns."""
    selector = selectors.DefaultSelector()
    for session in sessions:
        try:
            session.sock.send(_DISCONNECT)
            selector.register(session.sock, selectors.EVENT_READ)
        except OSError:
            session.sock.close()  # already closed by the broker
    deadline = time.monotonic() + timeout_s
    while selector.get_map():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker kept {len(selector.get_map())} connections")
        for key, _ in selector.select(1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                ended = sock.recv(64) == b""
            except OSError:
                ended = True
            if ended:
                selector.unregister(sock)
                sock.close()
    selector.close()


def longest_ping_s(session: Session, stop: threading.Event, every_s: float = 0.005) -> float:
    """The longest PINGREQ -> PINGRESP round trip on ``session`` until ``stop`` is set: how
    long the broker, which has one thread, answered nobody."""
    worst = 0.0
    with selectors.DefaultSelector() as selector:
        selector.register(session.sock, selectors.EVENT_READ)
        while not stop.is_set():
            sent = time.monotonic()
            session.sock.send(_PINGREQ)
            answer = b""
            while len(answer) < len(_PINGRESP):
                if not selector.select(timeout=30):
                    raise TimeoutError("no PINGRESP within 30 s")
                chunk = session.sock.recv(len(_PINGRESP) - len(answer))
                if not chunk:
                    raise ConnectionError(f"the broker closed {session.username}'s connection")
                answer += chunk
            worst = max(worst, time.monotonic() - sent)
            stop.wait(every_s)
    return worst
