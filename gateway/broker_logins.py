"""Broker logins: secrets and their hashes, and Mosquitto's password and ACL files rendered from
the registry, so that the broker lets in only registered devices and services, each with the
least it needs.

Mosquitto (2.0, as Debian ships it) reads both files at start and again on SIGHUP, and on
reload disconnects clients whose login is gone. With ``use_username_as_clientid`` every
client's id is its username, so nobody can take another login's session (the gateway's
persistent one above all). A device's username is ``{kind}/{id}`` (ids never contain ``/``), so
the one pattern ``write fleet/%u`` lets each device publish to its own topic only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

# Mosquitto's own format and default work factor: PBKDF2-SHA512, 101 iterations. Secrets are
# 192 random bits, so the hash need not be slow to resist guessing, and a storm of 10,000
# reconnecting devices costs the broker milliseconds, not minutes.
_ITERATIONS: Final = 101
_SALT_BYTES: Final = 12
SECRET_BYTES: Final = 24

ServiceRole: TypeAlias = Literal["gateway", "alerts", "api", "engineer"]
# What each kind of service login may do (Mosquitto ACL lines). Everything else is denied; a
# device's own topic comes from the pattern at the end of the file.
_SERVICE_ACLS: Final[dict[str, tuple[str, ...]]] = {
    "gateway": ("topic read fleet/#",),  # takes telemetry (and sees its own alerts)
    "alerts": ("topic write fleet/alerts/#",),  # the gateway's alert publisher: the only one
    "api": ("topic write fleet/meter/+", "topic write fleet/vehicle/+"),  # HTTP ingestion
    "engineer": ("topic read fleet/alerts/#",),  # field engineers: alerts, nothing else
}


@dataclasses.dataclass(frozen=True, slots=True)
class Login:
    """One username the broker accepts, with the hash of its secret and what it may do."""

    username: str
    secret_hash: str
    role: ServiceRole | Literal["device"]


def new_secret() -> str:
    """A fresh secret, shown once to whoever provisions the login."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """``secret`` as Mosquitto's password file keeps it: ``$7$iterations$salt$hash``."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def secret_matches(secret: str, secret_hash: str) -> bool:
    _, version, iterations, salt, digest = secret_hash.split("$")
    if version != "7":
        return False
    computed = hashlib.pbkdf2_hmac(
        "sha512", secret.encode(), base64.b64decode(salt), int(iterations)
    )
    return hmac.compare_digest(base64.b64encode(computed).decode(), digest)


def device_username(kind: str, device_id: str) -> str:
    return f"{kind}/{device_id}"


def session_login(name: str, session: int, sessions: int) -> str:
    """Gateway session ``session``'s client id or username: ``name`` itself when there is one
    session, else ``name-{session}`` (the broker makes usernames client ids: one login each)."""
    return name if sessions == 1 else f"{name}-{session}"


def render_password_file(logins: Iterable[Login]) -> str:
    return "".join(f"{login.username}:{login.secret_hash}\n" for login in logins)


def render_acl_file(logins: Iterable[Login]) -> str:
    lines = ["# Written by fleetgate from its registry; changes here are overwritten.", ""]
    for login in logins:
        if login.role != "device":
            lines += [f"user {login.username}", *_SERVICE_ACLS[login.role], ""]
    lines += ["# Every device (username kind/id) publishes to its own topic, and nowhere else.",
              "pattern write fleet/%u", ""]  # fmt: skip
    return "\n".join(lines)
