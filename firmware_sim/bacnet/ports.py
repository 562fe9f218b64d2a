"""Free UDP ports on loopback, for running BACnet/IP devices and clients side by side."""

from __future__ import annotations

import socket


def free_udp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct UDP ports free on `host` right now (all bound at once, so never the same one).

    BACnet/IP clients and devices must never share a port on loopback (a device would answer
    itself), and bacpypes3 sockets use SO_REUSEPORT, so a leftover device silently takes the
    traffic of a reused port: give every device and client a fresh one.
    """
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
