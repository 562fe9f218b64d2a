"""The MQTT topic scheme shared by edge and hub (see docs/wire.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import WireError

DEFAULT_ROOT = "cn/v1"

# Gateway ids become MQTT topic levels and broker user names: no wildcards, no separators.
GATEWAY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Kind(StrEnum):
    """The kinds of message a gateway topic carries."""

    STATUS = "status"
    BIRTH = "birth"
    DATA = "data"
    EVENT = "event"
    CMD = "cmd"
    ACK = "ack"
    PLAN = "plan"


# Which side publishes which kind: used by ACLs, the hub's subscriptions and docs.
EDGE_PUBLISHES = (Kind.STATUS, Kind.BIRTH, Kind.DATA, Kind.EVENT, Kind.ACK)
HUB_PUBLISHES = (Kind.CMD, Kind.PLAN)


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses topics under one root, default ``cn/v1``."""

    root: str = DEFAULT_ROOT

    def gateway(self, gateway_id: str, kind: Kind) -> str:
        """The topic of one kind of message for one gateway."""
        return f"{self.root}/gw/{gateway_id}/{kind.value}"

    def plan(self, gateway_id: str) -> str:
        """The retained lighting-plan topic of one gateway (hub -> edge)."""
        return self.gateway(gateway_id, Kind.PLAN)

    def hub_status(self) -> str:
        """The hub's retained online/offline topic (its last will)."""
        return f"{self.root}/hub/status"

    def all_gateways(self, kind: Kind) -> str:
        """A subscription filter for one kind of message from every gateway."""
        return f"{self.root}/gw/+/{kind.value}"

    def parse(self, topic: str) -> tuple[str, Kind]:
        """Split a gateway topic into (gateway id, kind); raise WireError otherwise."""
        prefix = self.root + "/gw/"
        if not topic.startswith(prefix):
            raise WireError(f"topic {topic!r} is not under {prefix!r}", topic=topic)
        rest = topic[len(prefix) :].split("/")
        if len(rest) != 2:
            raise WireError(f"topic {topic!r} is not {prefix}<gateway>/<kind>", topic=topic)
        gateway_id, kind_s = rest
        if not GATEWAY_ID_RE.match(gateway_id):
            raise WireError(f"topic {topic!r}: invalid gateway id {gateway_id!r}", topic=topic)
        try:
            kind = Kind(kind_s)
        except ValueError:
            raise WireError(f"topic {topic!r}: unknown message kind {kind_s!r}", topic=topic) from None
        return gateway_id, kind
