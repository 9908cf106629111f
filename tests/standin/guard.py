"""The networks the test process may reach besides loopback: the stand-in's block, while up."""

from __future__ import annotations

import ipaddress
from typing import Any

_admitted: set[Any] = set()


def admit(network: Any) -> None:
    _admitted.add(ipaddress.ip_network(network))


def revoke(network: Any) -> None:
    _admitted.discard(ipaddress.ip_network(network))


def admitted(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or any(address in network for network in _admitted)
