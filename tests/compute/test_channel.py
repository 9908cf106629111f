"""The authenticated channel's own refusals: wildcard binds and missing or short tokens."""

from __future__ import annotations

import pytest

from tasks.compute import channel
from tasks.errors import InputError


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "*"])  # noqa: S104
def test_a_wildcard_bind_is_refused(host):
    """Guards against a listener on every interface, as the old servers' defaults were."""
    with pytest.raises(InputError, match="listens on every interface"):
        channel.Listener(host, 0, b"k" * 32)


@pytest.mark.parametrize("value", [None, "short"])
def test_a_missing_or_short_token_is_refused_without_showing_it(value):
    env = {} if value is None else {channel.TOKEN_VARIABLE: value}
    with pytest.raises(InputError, match=channel.TOKEN_VARIABLE) as caught:
        channel.read_token(env)
    assert "short" not in str(caught.value)


def test_the_listener_binds_the_one_address_given():
    listener = channel.Listener("127.0.0.1", 0, b"k" * 32)
    try:
        assert listener.address[0] == "127.0.0.1"
    finally:
        listener.close()
