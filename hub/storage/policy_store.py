"""Reads and writes of the lighting policy tables (see policy_models.py), through `Storage`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .policy_models import (
    PolicyCalendar,
    PolicyConfig,
    PolicyCrisis,
    PolicyDecision,
    PolicyLamp,
    PolicyOverride,
    PolicyPresenceRule,
    PolicyProfile,
    PolicyZone,
    _Item,
)
from .store import Storage

#: Policy list name (as in `rules.PolicyData`) -> its table.
TABLES: dict[str, type[_Item]] = {
    "profiles": PolicyProfile,
    "calendars": PolicyCalendar,
    "zones": PolicyZone,
    "lamps": PolicyLamp,
    "presence_rules": PolicyPresenceRule,
    "overrides": PolicyOverride,
    "crises": PolicyCrisis,
}


class PolicyStore:
    """The policy tables of one hub database."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def load(self) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """The whole policy as a `rules.City` dict, and the sensors of each lamp."""
        with self._storage._active():
            cfg = await PolicyConfig.get_or_none(id=1)
            out: dict[str, Any] = {
                "settings": cfg.settings if cfg is not None else {},
                "default_calendar": cfg.default_calendar if cfg is not None else "default",
            }
            sensors: dict[str, list[str]] = {}
            for name, table in TABLES.items():
                rows = await table.all().order_by("updated_ms", "id")
                out[name] = [r.body for r in rows]
                if table is PolicyLamp:
                    sensors = {r.id: list(r.sensors) for r in rows if r.sensors}  # type: ignore[attr-defined]
        return out, sensors

    async def put_config(self, settings: dict[str, Any], default_calendar: str) -> None:
        """Store the city settings and default calendar."""
        with self._storage._active():
            await PolicyConfig.update_or_create(
                id=1, defaults={"settings": settings, "default_calendar": default_calendar}
            )

    async def put(self, kind: str, item_id: str, body: dict[str, Any], now_ms: int, **extra: Any) -> None:
        """Create or replace one policy object."""
        with self._storage._active():
            await TABLES[kind].update_or_create(
                id=item_id, defaults={"body": body, "updated_ms": now_ms, **extra}
            )

    async def delete(self, kind: str, item_id: str) -> bool:
        """Delete one policy object; False if there was none."""
        with self._storage._active():
            n = await TABLES[kind].filter(id=item_id).delete()
        return n > 0

    async def record_decisions(self, rows: Iterable[tuple[str, float, str, str, int, int | None]]) -> None:
        """Upsert (lamp, level, source, detail, at_ms, sent_ms) decisions."""
        rows = list(rows)
        if not rows:
            return
        with self._storage._active():
            conn = self._storage._ctx.db()
            await conn.execute_many(
                "INSERT INTO policy_decision (lamp, level, source, detail, at_ms, sent_ms) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(lamp) DO UPDATE SET level=excluded.level, "
                "source=excluded.source, detail=excluded.detail, at_ms=excluded.at_ms, "
                "sent_ms=coalesce(excluded.sent_ms, policy_decision.sent_ms)",
                [list(r) for r in rows],
            )

    async def decision(self, lamp: str) -> dict[str, Any] | None:
        """The recorded decision of a lamp, or None."""
        with self._storage._active():
            rows = await PolicyDecision.filter(lamp=lamp).values(
                "lamp", "level", "source", "detail", "at_ms", "sent_ms"
            )
        return rows[0] if rows else None
