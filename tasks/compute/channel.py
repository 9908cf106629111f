"""Authenticated TCP channels between the processes of one run: bind narrowly, prove the token.

The parameter server and the multi-node MPI control channel listen here. A listener binds one
address (loopback here, the task's or node's private address on AWS; a wildcard such as
``0.0.0.0`` is refused) and every connection proves, before anything else is read, that it
holds the run's token: a mutual HMAC-SHA256 challenge-response over fresh random nonces, so the
token never crosses the wire and a recorded exchange cannot be replayed. A peer that fails
(no token, a wrong one, or silence past ``HANDSHAKE_TIMEOUT_S``) is dropped and never reaches
the caller.

The token is random per run (``new_token``), made by the flow and handed to the processes as
the ``SCIFLOW_RUN_TOKEN`` variable (read by ``tasks.settings``): set for the child here, as an
ECS/Batch ``secrets`` entry (a Secrets Manager ARN) on AWS, never in clear in a job body.

Messages after the handshake are bytes (``Connection.send_bytes``/``recv_bytes`` with a
length bound); nothing received is unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import select
import socket
import struct
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection

from tasks.errors import InputError
from tasks.settings import RUN_TOKEN_VARIABLE, run_token_value

logger = logging.getLogger(__name__)

TOKEN_VARIABLE = RUN_TOKEN_VARIABLE
# A token shorter than this is refused: it would be guessable.
MIN_TOKEN_CHARS = 32
# Seconds a peer has to complete the handshake before it is dropped.
HANDSHAKE_TIMEOUT_S = 10.0
_NONCE_BYTES = 32
_CLIENT, _SERVER = b"sciflow-channel client", b"sciflow-channel server"
_WELCOME = b"sciflow-channel ok"


class AuthenticationFailed(ConnectionError):
    """The peer did not prove it holds the run's token (or this side does not hold the peer's)."""


def new_token() -> str:
    """A fresh random run token (64 hex characters)."""
    return secrets.token_hex(32)


def read_token(env: Mapping[str, str] | None = None) -> bytes:
    """The run token from ``SCIFLOW_RUN_TOKEN`` in ``env``, else in this process (tasks.settings).

    Raises:
        InputError: The variable is unset or shorter than ``MIN_TOKEN_CHARS``; the value is
            never shown.
    """
    value = run_token_value(env)
    if len(value) < MIN_TOKEN_CHARS:
        state = "is not set" if not value else f"holds {len(value)} characters (<redacted>)"
        raise InputError(
            f"{TOKEN_VARIABLE} {state}; expected the run's token of at least {MIN_TOKEN_CHARS} "
            "characters, given by the flow (as an ECS/Batch `secrets` entry on AWS)"
        )
    return value.encode()


def scoped_key(token: bytes, scope: str) -> bytes:
    """A key for one job from a longer-lived token: HMAC-SHA256(token, scope).

    Two jobs with different scopes (e.g. Batch job ids) cannot authenticate to each other even
    when their containers share one token secret.
    """
    return hmac.new(token, scope.encode(), hashlib.sha256).digest()


def check_bind_address(host: str, parameter: str = "host") -> str:
    """``host`` if it names one address; a wildcard (all interfaces) is refused.

    Raises:
        InputError: ``host`` is empty, ``0.0.0.0``, ``::`` or ``*``.
    """
    wildcard = host in ("", "*")
    if not wildcard:
        try:
            wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
        except ValueError:
            wildcard = False  # a name: it resolves to its own addresses
    if wildcard:
        raise InputError(
            f"{parameter}={host!r} listens on every interface; expected one address: "
            "127.0.0.1 on this machine, the task's or node's private address on AWS"
        )
    return host


def _timeouts(conn: Connection, seconds: float) -> None:
    """Kernel send/receive timeouts on the connection's socket (0: none)."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.detach()


def _mac(key: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, role + nonce, hashlib.sha256).digest()


def _prove(conn: Connection, key: bytes, *, server: bool) -> None:
    """Mutual challenge-response; the server challenges first and answers only a proven peer."""
    if server:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        conn.send_bytes(nonce)
        answer = conn.recv_bytes(64)
        if not hmac.compare_digest(answer, _mac(key, _CLIENT, nonce)):
            raise AuthenticationFailed("the peer did not prove the run's token")
        theirs = conn.recv_bytes(64)
        if len(theirs) != _NONCE_BYTES:
            raise AuthenticationFailed("the peer sent a malformed challenge")
        conn.send_bytes(_mac(key, _SERVER, theirs))
        if conn.recv_bytes(64) != _WELCOME:
            raise AuthenticationFailed("the peer refused this server's proof")
    else:
        nonce = conn.recv_bytes(64)
        if len(nonce) != _NONCE_BYTES:
            raise AuthenticationFailed("the server sent a malformed challenge")
        conn.send_bytes(_mac(key, _CLIENT, nonce))
        ours = secrets.token_bytes(_NONCE_BYTES)
        conn.send_bytes(ours)
        try:
            answer = conn.recv_bytes(64)
        except (EOFError, ConnectionResetError) as exc:  # the server closes on a wrong proof
            raise AuthenticationFailed("the server refused this peer's token") from exc
        if not hmac.compare_digest(answer, _mac(key, _SERVER, ours)):
            raise AuthenticationFailed("the server did not prove the run's token")
        conn.send_bytes(_WELCOME)


class Listener:
    """A TCP listener on one address whose accepted connections have proven the key.

    Args:
        host: One address to bind (``check_bind_address``).
        port: TCP port; 0 for any free one.
        key: The run's token (or a ``scoped_key``).
        parameter: The caller's name for ``host``, for the refusal message.

    Raises:
        InputError: ``host`` is a wildcard.
        OSError: The address cannot be bound.
    """

    def __init__(self, host: str, port: int, key: bytes, parameter: str = "host") -> None:
        check_bind_address(host, parameter)
        self.key = key
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host.strip("[]"), port), family=family)
        self.refused = 0  # peers dropped for failing the handshake

    @property
    def address(self) -> tuple[str, int]:
        """The bound (address, port)."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def fileno(self) -> int:
        """The listening socket's descriptor (for ``select``)."""
        return self.sock.fileno()

    def accept(self, timeout_s: float | None = None) -> Connection | None:
        """The next peer that proves the key, or ``None`` once ``timeout_s`` has passed.

        Peers that fail the handshake are closed, logged and counted in ``refused``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return None
            raw, peer = self.sock.accept()
            conn = Connection(raw.detach())
            _timeouts(conn, HANDSHAKE_TIMEOUT_S)
            try:
                _prove(conn, self.key, server=True)
            except (AuthenticationFailed, OSError, EOFError) as exc:
                self.refused += 1
                logger.warning("refused a connection from %s: %s", peer[0], exc)
                conn.close()
                continue
            _timeouts(conn, 0)
            return conn

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def connect(host: str, port: int, key: bytes, timeout_s: float) -> Connection:
    """A connection to a ``Listener`` at ``host:port``, both sides proven.

    Raises:
        AuthenticationFailed: The server refused this key or did not prove its own.
        OSError: Nothing accepted a TCP connection within ``timeout_s``.
    """
    raw = socket.create_connection((host.strip("[]"), port), timeout=timeout_s)
    raw.settimeout(None)
    conn = Connection(raw.detach())
    _timeouts(conn, HANDSHAKE_TIMEOUT_S)
    try:
        _prove(conn, key, server=False)
    except BaseException:
        conn.close()
        raise
    _timeouts(conn, 0)
    return conn
