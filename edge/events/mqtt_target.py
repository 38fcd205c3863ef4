"""Where the MQTT sink publishes: the ``--mqtt`` URL as an :class:`MqttTarget`, and names made safe
as topic levels and ids.

``mqtt://[user:pass@]host[:port][/prefix]`` (``mqtts://`` for TLS; ports 1883 / 8883 by default). A
user without a password in the URL takes it from ``EDGE_MQTT_PASSWORD`` (keeps it out of ``ps``).
Parsing needs no paho: ``edge run`` checks the option up front.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edge.errors import EdgeError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
PASSWORD_ENV = "EDGE_MQTT_PASSWORD"
_SPECIAL = re.compile(r"[/+#\s\x00]+")
_ID = re.compile(r"[^A-Za-z0-9_-]+")


def topic_level(name: str) -> str:
    """A name as one topic level: no ``/``, ``+``, ``#`` or white space."""
    return _SPECIAL.sub("_", str(name)).strip("_") or "_"


def safe_id(name: str) -> str:
    """A name as an id Home Assistant accepts in discovery topics (``[A-Za-z0-9_-]``)."""
    return _ID.sub("_", str(name)).strip("_") or "_"


@dataclass(frozen=True)
class MqttTarget:
    """A parsed ``--mqtt`` URL. ``prefix`` is ``None`` when the URL gives none (the sink then uses
    ``edgekit/<camera>``)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    prefix: str | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        """The URL without the password (for log lines)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.address}"


def parse_mqtt_url(url: str, option: str = "--mqtt") -> MqttTarget:
    """``mqtt://[user:pass@]host[:port][/prefix]`` or ``mqtts://...`` -> :class:`MqttTarget`.

    User and password may be percent-encoded (``%40`` for ``@``); a user without a password takes it
    from ``EDGE_MQTT_PASSWORD``. Raises :class:`EdgeError` naming ``option`` (never the password).
    """
    text = str(url).strip()
    shown = re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", text)
    if "://" not in text:
        raise EdgeError(f"{option} {shown}: write mqtt://[user:pass@]host[:port][/prefix] (or mqtts:// for TLS)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise EdgeError(f"{option} {shown}: the scheme must be mqtt:// or mqtts:// (TLS), not {parts.scheme}://")
    if parts.query or "?" in text:
        raise EdgeError(f"{option} {shown}: no ?query; write mqtt://[user:pass@]host[:port][/prefix]")
    if "#" in text.partition("@")[2] or ("@" not in text and "#" in text):
        raise EdgeError(f"{option} {shown}: the topic prefix may not contain +, # or empty levels")
    try:
        port = parts.port
    except ValueError:
        raise EdgeError(f"{option} {shown}: the port must be a number from 1 to 65535") from None
    host = parts.hostname
    if not host:
        raise EdgeError(f"{option} {shown}: no broker host (e.g. mqtt://192.168.1.10 or mqtt://broker.local:1883)")
    if port == 0:
        raise EdgeError(f"{option} {shown}: the port must be a number from 1 to 65535")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    if password is not None and not username:
        raise EdgeError(f"{option} {shown}: a password needs a user (mqtt://user:pass@host)")
    prefix = unquote(parts.path).strip("/") or None
    if prefix is not None:
        if any(ch in prefix for ch in "+#\x00") or "//" in prefix:
            raise EdgeError(f"{option} {shown}: the topic prefix {prefix!r} may not contain +, # or empty levels")
    return MqttTarget(host, port or DEFAULT_PORTS[scheme], scheme == "mqtts", username or None, password, prefix)


__all__ = ["DEFAULT_PORTS", "PASSWORD_ENV", "MqttTarget", "parse_mqtt_url", "safe_id", "topic_level"]
