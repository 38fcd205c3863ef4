"""The broker connection behind :class:`~edge.events.mqtt.MqttSink`: one paho client whose own network
thread connects, reconnects and resends what was queued while the broker was away.

Publishing never waits: QoS 1 event messages find room up to ``queue_size`` unacknowledged, state
messages in the headroom above it (paho's own limit, :meth:`MqttConnection.limit_queue`), and what
finds no room is counted as dropped. Each connection problem is one log line, not one per retry,
and not one per connection when several share a :class:`BrokerProblems` (a camera each, one broker).
``paho-mqtt>=2`` is imported when a connection is made, not with this module.
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time
from typing import Callable

from edge.errors import EdgeError, first_line
from edge.events.mqtt_target import MqttTarget


def _import_paho():
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise EdgeError("--mqtt needs paho-mqtt 2: pip install 'edgekit[events]' (or pip install 'paho-mqtt>=2')") \
            from None
    return mqtt, CallbackAPIVersion


class BrokerProblems:
    """The connection problems said so far, shared by the connections of one run to one broker.

    A problem is said by the first connection that has it; others that hit the same one (a broker
    that is down refuses every camera's connection) stay quiet. It is said again once every
    connection that had it has connected or moved on to another problem. One connection alone
    says each problem once, as it always did.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # paho's threads of several connections call in
        self._holders: dict[str, set[int]] = {}  # problem -> ids of the connections that have it now
        self._current: dict[int, str] = {}  # connection id -> its problem now

    def say(self, owner, problem: str, message: str, say: Callable[[str], None]) -> None:
        """``owner`` has ``problem`` now; ``say(message)`` unless another connection has it too."""
        key = id(owner)
        with self._lock:
            self._drop(key)
            holders = self._holders.setdefault(problem, set())
            first = not holders
            holders.add(key)
            self._current[key] = problem
        if first:
            say(message)

    def clear(self, owner) -> None:
        """``owner`` connected: whatever it had is over for it."""
        with self._lock:
            self._drop(id(owner))

    def _drop(self, key: int) -> None:
        problem = self._current.pop(key, None)
        if problem is not None:
            holders = self._holders.get(problem)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._holders[problem]


class MqttConnection:
    """A paho client to ``target`` and its numbers (``published``, ``dropped``, ``connects``, ``attempts``).

    ``will_topic`` gets ``offline`` (retained) from the broker when the connection dies; ``prefix``
    is named in the connect line; ``say`` logs; ``on_connect`` runs on paho's thread after every
    successful connect (the sink publishes what the broker should hold then). ``closing`` is set
    by the owner as it closes, so its own disconnect is not reported as a lost broker. ``problems``:
    a :class:`BrokerProblems` shared with the other connections to this broker (default: its own).
    """

    def __init__(self, target: MqttTarget, *, client_id: str, will_topic: str, prefix: str, queue_size: int,
                 keepalive: int, reconnect_delay: tuple[int, int], say: Callable[[str], None],
                 on_connect: Callable[[], None], problems: BrokerProblems | None = None) -> None:
        self._mqtt, api = _import_paho()
        self.target = target
        self.prefix = prefix
        self.queue_size = queue_size
        self._say = say
        self._on_connected = on_connect
        # bumped from several threads (detector, helper, paho's); read without the lock
        self.published = 0  # all messages accepted
        self.dropped = 0  # messages that found the queue full (events, state, a stats tick still unsent)
        self.connects = 0  # successful connections (1 + reconnects)
        self.attempts = 0  # connection attempts
        self.connected = False
        self.closing = False
        self._pending: collections.deque = collections.deque()  # MQTTMessageInfo of QoS 1 messages not acked
        self._numbers = threading.Lock()
        self._down_since: float | None = None
        self._problem: str | None = None  # the last connection problem logged (each is logged once)
        self._problems = problems if problems is not None else BrokerProblems()

        mqtt = self._mqtt
        client = mqtt.Client(api.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
        client.reconnect_delay_set(int(reconnect_delay[0]), int(reconnect_delay[1]))
        self.reconnect_max = int(reconnect_delay[1])
        client.will_set(will_topic, "offline", qos=1, retain=True)
        if target.username:
            client.username_pw_set(target.username, target.password)
        if target.tls:
            import ssl

            client.tls_set_context(ssl.create_default_context())  # the system's CA store, host name checked
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self._on_pre_connect
        self._client = client
        self._keepalive = int(keepalive)

    def limit_queue(self, messages: int) -> None:
        """paho's hard limit on queued messages (set once: paho refuses changes on a connection)."""
        self._client.max_queued_messages_set(messages)

    def start(self) -> None:
        """Connect on paho's thread; a host paho refuses is one log line and no connection."""
        try:
            self._client.connect_async(self.target.host, self.target.port, self._keepalive)
            self._client.loop_start()
        except Exception as exc:  # a host name paho refuses: the run goes on without MQTT
            self._say(f"cannot start the connection to {self.target.describe()} ({first_line(exc)}); "
                      "running without MQTT")

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for queued messages to reach a connected broker."""
        deadline = time.monotonic() + timeout
        while self.connected and self.pending_count() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, timeout: float) -> None:
        client = self._client
        try:
            client.disconnect()  # a clean disconnect: the broker does not send the will
        except Exception:
            pass
        stopper = threading.Thread(target=client.loop_stop, name="edge-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(1.0, timeout))  # paho may be inside a connect attempt (its timeout)

    # ---- publishing ------------------------------------------------------------------------------

    def pending_count(self) -> int:
        """QoS 1 messages paho holds that the broker has not acknowledged (from the oldest on:
        acknowledgements come in order, so an over-count is brief)."""
        pending = self._pending
        try:
            while pending:
                try:
                    if not pending[0].is_published():
                        break
                except (ValueError, RuntimeError):  # paho gave up on it
                    pass
                pending.popleft()
        except IndexError:  # another thread emptied it first
            pass
        return len(pending)

    def count(self, name: str, n: int = 1) -> None:
        with self._numbers:
            setattr(self, name, getattr(self, name) + n)

    def publish(self, topic: str, payload, *, qos: int = 1, retain: bool = False, state: bool = False) -> bool:
        """Into paho's queue, never waiting. Events find room up to ``queue_size``; state messages
        (``state``) the headroom above it. Returns whether the message was taken."""
        if qos and not state and self.pending_count() >= self.queue_size:
            self.count("dropped")
            return False
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except Exception as exc:  # a topic paho refuses
            self.count("dropped")
            self._say(f"cannot publish to {topic!r} ({first_line(exc)})")
            return False
        rc = info.rc
        if rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self.count("dropped")
            return False
        if qos:
            if rc == self._mqtt.MQTT_ERR_NO_CONN:  # queued all the same: paho sends it on (re)connect
                info.rc = self._mqtt.MQTT_ERR_SUCCESS  # so that is_published() tells when it was acked
            self._pending.append(info)
        elif rc != self._mqtt.MQTT_ERR_SUCCESS:
            return False
        self.count("published")
        return True

    def publish_unqueued(self, topic: str, payload: str):
        """QoS 0 outside the queue's accounting (the caller skips a message while the last is unsent):
        paho's message info when paho took it, else None. Not counted: the caller counts it."""
        try:
            info = self._client.publish(topic, payload, qos=0)
        except Exception:
            return None
        return info if info.rc == self._mqtt.MQTT_ERR_SUCCESS else None

    # ---- paho's callbacks (its network thread) ----------------------------------------------------

    def _problem_once(self, problem: str, message: str) -> None:
        if problem != self._problem:
            self._problem = problem
            self._problems.say(self, problem, message, self._say)

    def _on_pre_connect(self, client, userdata) -> None:
        self.count("attempts")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.connected = False
            words = str(reason_code)
            who = f"user {self.target.username!r}" if self.target.username else "an anonymous client"
            hint = ("check the user and password in --mqtt" if self.target.username
                    else "the broker wants a user and password: mqtt://user:pass@host")
            if "identifier" in words.lower():
                hint = "another client may be using the same client id"
            self._problem_once(f"refused:{words}",
                               f"the broker at {self.target.address} refused {who} ({words}): {hint}; the run goes "
                               f"on without MQTT and keeps retrying (at most {self.reconnect_max} s apart)")
            return
        self.connected = True
        self.count("connects")
        self._on_connected()
        again = "re" if self.connects > 1 else ""
        down = f" after {time.monotonic() - self._down_since:.1f} s" if self._down_since is not None else ""
        self._say(f"{again}connected to {self.target.describe()}{down}, topics under {self.prefix}/"
                  + (f" ({self.dropped} messages dropped so far)" if self.dropped else ""))
        self._problem = None
        self._problems.clear(self)
        self._down_since = None

    def _on_disconnect(self, client, userdata, disconnect_flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was and not self.closing:
            self._down_since = time.monotonic()
            why = str(reason_code)
            if why in ("Unspecified error", "Success", "Normal disconnection"):
                why = "the connection closed"
            self._problem_once("lost", f"lost the broker at {self.target.address} ({why}); events queue up (at most "
                               f"{self.queue_size}) and it keeps retrying (at most {self.reconnect_max} s apart)")

    def _on_connect_fail(self, client, userdata) -> None:
        exc = sys.exc_info()[1]  # paho calls this while handling the connection's OSError
        if self._down_since is None:
            self._down_since = time.monotonic()
        if self._problem == "lost":
            return  # this outage was said already
        if isinstance(exc, socket.gaierror):
            why = f"cannot resolve {self.target.host!r}"
        elif type(exc).__name__ == "SSLCertVerificationError":
            why = (f"its TLS certificate is not trusted: {getattr(exc, 'verify_message', None) or first_line(exc)}; "
                   "mqtts:// checks it against the system's CA store (SSL_CERT_FILE names another CA file)")
        elif exc is not None:
            why = first_line(exc, with_type=not (isinstance(exc, OSError) and exc.strerror))
        else:
            why = "connection failed"
        self._problem_once(f"fail:{type(exc).__name__}",
                           f"cannot reach the broker at {self.target.address} ({why}); the run goes on without "
                           f"MQTT and keeps retrying (at most {self.reconnect_max} s apart)")
