"""The stand-in's network: one private subnet, a namespace per task, a way in from this host.

A session takes one /20 block of 198.18.0.0/15 (RFC 2544's range for network tests, never
routed on the internet), held by a lock file, so two test sessions on one machine do not
collide. In the block:

- a bridge, in a namespace of its own (``<tag>sw``);
- one veth from this host's namespace to the bridge, holding the block's last address
  (``host_address``): moto and the Prefect server are reached there, through relays;
- a namespace per task or node, its ``eth0`` on the bridge holding the address moto reports
  for it, its own ``/etc/hosts`` (``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts``).

Only the host veth touches this host's network: the kernel routes the block to it, and
deleting it (``close``) removes the route. Names are fixed per block, so a session that
takes a block first deletes what a crashed session left there.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# 198.18.0.0/15 in /20 blocks: 32 sessions at once at most.
RANGE = ipaddress.ip_network("198.18.0.0/15")
BLOCK_PREFIX = 20
LOCKS = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
NETNS_ETC = Path("/etc/netns")
IP_TIMEOUT_S = 30


class NamespacesUnavailable(RuntimeError):
    """This machine cannot make the stand-in's network (the message says why)."""


def cannot_make_namespaces() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (iproute2, util-linux)"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_NET_ADMIN)"
    return None


def ip(*args: str) -> str:
    """Run ``ip <args>``; raise with its stderr if it fails."""
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}`: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge: a task's or a node's machine."""

    namespace: str
    address: str
    hostname: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host: its network, its hosts file, its hostname."""
        hostname = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname]
        return ["ip", "netns", "exec", self.namespace, *hostname, *argv]


class Network:
    """The block, its bridge and its hosts; ``with Network() as net:`` makes and removes them."""

    def __init__(self) -> None:
        self.block: ipaddress.IPv4Network | None = None
        self._index = -1
        self._lock: IO[str] | None = None
        self._hosts: dict[str, Host] = {}
        self._names: dict[str, str] = {}  # Cloud Map and other DNS names -> address
        self._counter = 0
        self._last_allocated: dict[str, int] = {}  # subnet -> index of its last address given
        self._mutex = threading.Lock()

    # ---- the block ---------------------------------------------------------------------------

    @property
    def tag(self) -> str:
        return f"sfs{self._index}"

    @property
    def switch(self) -> str:
        return f"{self.tag}sw"

    @property
    def host_link(self) -> str:
        return f"{self.tag}h"

    @property
    def host_address(self) -> str:
        """This host's address on the bridge, where relays to 127.0.0.1 listen."""
        assert self.block is not None
        return str(self.block.broadcast_address - 1)

    def __enter__(self) -> Network:
        reason = cannot_make_namespaces()
        if reason:
            raise NamespacesUnavailable(reason)
        self._take_block()
        try:
            self._remove_leftovers()
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            veth = ["type", "veth", "peer", "name", "up0", "netns", self.switch]
            ip("link", "add", self.host_link, *veth)
            ip("-n", self.switch, "link", "set", "up0", "master", "br0", "up")
            ip("addr", "add", f"{self.host_address}/{BLOCK_PREFIX}", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_block(self) -> None:
        for index, block in enumerate(RANGE.subnets(new_prefix=BLOCK_PREFIX)):
            lock = (LOCKS / f"sciflow-standin-{index}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self.block, self._index, self._lock = block, index, lock
            return
        raise NamespacesUnavailable(f"every /{BLOCK_PREFIX} block of {RANGE} is in use")

    def _remove_leftovers(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=30)
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=30
        ).stdout
        for line in listed.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(self.tag):
                self._delete_namespace(name)

    def close(self) -> None:
        """Delete every namespace and the host veth, and give the block back."""
        for host in list(self._hosts.values()):
            self._delete_namespace(host.namespace)
        self._hosts.clear()
        if self._index >= 0:
            self._delete_namespace(self.switch)  # takes the host veth's peer, so the pair
            subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=30)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @staticmethod
    def _delete_namespace(name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)

    # ---- hosts ---------------------------------------------------------------------------------

    def contains(self, address: str) -> bool:
        return self.block is not None and ipaddress.ip_address(address) in self.block

    def allocate(self, cidr: str) -> str:
        """A free address in ``cidr`` (a subnet inside the block), for a new host."""
        subnet = ipaddress.ip_network(cidr)
        assert self.block is not None
        if not subnet.subnet_of(self.block):
            raise NamespacesUnavailable(
                f"subnet {cidr} is outside the stand-in's block {self.block}: make the test's "
                "VPC and subnets inside `standin.block`"
            )
        with self._mutex:
            used = {h.address for h in self._hosts.values()} | {self.host_address}
            candidates = list(subnet.hosts())
            # Round the subnet from the last address given, as a fresh ENI would: an address
            # freed a moment ago is still in this host's ARP cache under the old veth's MAC,
            # and a new task there would be unreachable for half a minute.
            start = self._last_allocated.get(cidr, -1) + 1
            for index in [*range(start, len(candidates)), *range(start)]:
                address = candidates[index]
                if str(address) not in used and not str(address).endswith(".0"):
                    self._last_allocated[cidr] = index
                    # Reserve it before the namespace exists: the caller adds it next.
                    self._hosts[f"reserved-{address}"] = Host("", str(address), "")
                    return str(address)
        raise NamespacesUnavailable(f"no free address left in {cidr}")

    def add_host(self, address: str, hostname: str) -> Host:
        """A namespace holding ``address`` on the bridge, with a hosts file of its own."""
        with self._mutex:
            self._hosts.pop(f"reserved-{address}", None)
            self._counter += 1
            # Named under the lock: tasks start on threads, and two hosts must not share a peer.
            name, peer = f"{self.tag}-{self._counter}", f"v{self._counter}"
            host = Host(name, address, hostname)
            self._hosts[name] = host
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        veth = ["type", "veth", "peer", "name", peer, "netns", self.switch]
        ip("link", "add", "name", "eth0", "netns", name, *veth)
        ip("-n", self.switch, "link", "set", peer, "master", "br0", "up")
        ip("-n", name, "addr", "add", f"{address}/{BLOCK_PREFIX}", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        # Whatever held this address before had another MAC; forget it (once round the
        # subnet, addresses are reused).
        subprocess.run(
            ["ip", "neigh", "flush", "to", address, "dev", self.host_link],
            capture_output=True,
            timeout=IP_TIMEOUT_S,
        )
        self._write_hosts_file(host)
        return host

    def remove_host(self, host: Host) -> None:
        """Delete ``host``'s namespace (its veth pair goes with it)."""
        with self._mutex:
            self._hosts.pop(host.namespace, None)
        self._delete_namespace(host.namespace)

    def hosts(self) -> Iterator[Host]:
        with self._mutex:
            return iter([h for h in self._hosts.values() if h.namespace])

    def set_names(self, names: Mapping[str, str]) -> None:
        """Make ``names`` (DNS name -> address) resolve in every host, now and later."""
        with self._mutex:
            if names == self._names:
                return
            self._names = dict(names)
        for host in self.hosts():
            self._write_hosts_file(host)

    def _write_hosts_file(self, host: Host) -> None:
        lines = ["127.0.0.1 localhost", f"{host.address} {host.hostname}"]
        lines += [f"{address} {name}" for name, address in sorted(self._names.items())]
        path = NETNS_ETC / host.namespace / "hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        # In place, never by rename: a running host sees this file through a bind mount of
        # its inode.
        with path.open("a+") as file:
            file.seek(0)
            file.truncate()
            file.write("\n".join(lines) + "\n")
