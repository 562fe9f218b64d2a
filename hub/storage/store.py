"""The storage layer: the one seam between the hub and its database (SQLite now, PostgreSQL later).

The ORM serves the registry, events, commands and tokens. The hot ingest path goes through
:class:`IngestTx`: one transaction per batch, ``executemany`` on the raw connection.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext, _current_context
from tortoise.transactions import in_transaction

from . import schema
from .models import ApiToken, CommandRecord, Device, EventRecord, Gateway, Point

MODELS_MODULE = "hub.storage.models"
POLICY_MODELS_MODULE = "hub.storage.policy_models"

# Gateways per key lookup: 3 parameters each, under SQLite's historic limit of 999.
_CLAIM_CHUNK = 300

# (point_id, ts_ms, value, quality_code)
SampleRow = tuple[int, int, float | None, int]


class StorageError(Exception):
    """The database URL cannot be used."""


def sqlite_url(url: str) -> tuple[str, Path | None]:
    """Add our SQLite pragmas (WAL, synchronous=NORMAL) to a URL; return it and the file path."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise StorageError(
            f"unsupported database {parts.scheme!r}: this version supports sqlite:// only"
        )
    params = dict(parse_qsl(parts.query))
    params.setdefault("journal_mode", "WAL")
    params.setdefault("synchronous", "NORMAL")
    path = url[len("sqlite://") :].split("?", 1)[0]
    query = "&".join(f"{k}={v}" for k, v in params.items())
    file = None if path == ":memory:" else Path(path)
    return f"sqlite://{path}?{query}", file


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event ready to insert."""

    gateway_id: int
    seq: int
    ts_ms: int
    device: str
    kind: str
    active: bool
    severity: str
    point: str
    detail: str


class IngestTx:
    """One ingest batch inside one transaction (raw SQL, executemany)."""

    def __init__(self, conn: BaseDBAsyncClient, sql: dict[str, str]) -> None:
        self._conn = conn
        self._sql = sql

    async def claim(self, gateway_id: int, seqs: Sequence[int]) -> set[int]:
        """Record message keys; return the seqs that were new (idempotent ingest)."""
        return (await self.claim_many({gateway_id: seqs})).get(gateway_id, set())

    async def claim_many(self, seqs: Mapping[int, Sequence[int]]) -> dict[int, set[int]]:
        """Record the message keys of many gateways; the new seqs of each (three statements).

        One query per gateway made claiming cost more than storing the samples once a
        batch spans hundreds of gateways (each statement is a hop to the database thread).
        """
        wanted = {gid: s for gid, s in seqs.items() if s}
        seen: set[tuple[int, int]] = set()
        items = list(wanted.items())
        for i in range(0, len(items), _CLAIM_CHUNK):
            chunk = items[i : i + _CLAIM_CHUNK]
            where = " OR ".join(["(gateway_id = ? AND seq BETWEEN ? AND ?)"] * len(chunk))
            params: list[int] = []
            for gid, s in chunk:
                params += (gid, min(s), max(s))
            _, rows = await self._conn.execute_query(self._sql["existing_keys"] + where, params)
            seen.update((r[0], r[1]) for r in rows)
        fresh: dict[int, set[int]] = {}
        keys: list[list[int]] = []
        last: list[list[int]] = []
        for gid, s in wanted.items():
            new = [q for q in dict.fromkeys(s) if (gid, q) not in seen]
            fresh[gid] = set(new)
            if new:
                keys += ([gid, q] for q in new)
                last.append([max(new), gid])
        if keys:
            await self._conn.execute_many(self._sql["insert_keys"], keys)
            await self._conn.execute_many(self._sql["update_gateway_seq"], last)
        return fresh

    async def insert_samples(self, rows: list[SampleRow]) -> None:
        """Append samples."""
        if rows:
            await self._conn.execute_many(self._sql["insert_samples"], rows)  # type: ignore[arg-type]

    async def update_latest(self, rows: list[tuple[float | None, int, int, int]]) -> None:
        """Write the latest (value, ts_ms, quality, point_id) of points through to the table."""
        if rows:
            await self._conn.execute_many(self._sql["update_latest"], rows)  # type: ignore[arg-type]

    async def replace_gaps(self, gaps: Mapping[int, Sequence[tuple[int, int, int, bool]]]) -> None:
        """Rewrite the missing-seq ranges ``(lo, hi, opened_ms, restart)`` of these gateways."""
        if gaps:
            await self._conn.execute_many(self._sql["delete_gaps"], [[gid] for gid in gaps])
            rows = [[gid, lo, hi, at, int(r)] for gid, gs in gaps.items() for lo, hi, at, r in gs]
            if rows:
                await self._conn.execute_many(self._sql["insert_gap"], rows)

    async def update_last_seen(self, rows: list[tuple[int, int]]) -> None:
        """Move gateways' ``last_seen_ms`` forward: ``(last_seen_ms, gateway_id)`` rows."""
        if rows:
            await self._conn.execute_many(self._sql["update_last_seen"], rows)  # type: ignore[arg-type]

    async def insert_events(self, rows: list[EventRow]) -> None:
        """Append events."""
        if rows:
            await EventRecord.bulk_create(
                [
                    EventRecord(
                        gateway_id=r.gateway_id,
                        seq=r.seq,
                        ts_ms=r.ts_ms,
                        device=r.device,
                        kind=r.kind,
                        active=r.active,
                        severity=r.severity,
                        point=r.point,
                        detail=r.detail,
                    )
                    for r in rows
                ],
                using_db=self._conn,
            )


class Storage:
    """Owns the tortoise context of one database and every query the hub makes."""

    def __init__(self, db_url: str) -> None:
        self.url, self.file = sqlite_url(db_url)
        self._sql = schema.SQLITE
        self._ctx = TortoiseContext()

    @contextmanager
    def _active(self) -> Iterator[None]:
        # tortoise 1.x resolves connections through a contextvar; several hubs (tests, CLI)
        # may live in one process, so bind ours around each call instead of globally.
        token = _current_context.set(self._ctx)
        try:
            yield
        finally:
            _current_context.reset(token)

    async def open(self) -> None:
        """Connect and create any missing tables."""
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        with self._active():
            await self._ctx.init(db_url=self.url, modules={"models": [MODELS_MODULE, POLICY_MODELS_MODULE]})
            await self._ctx.generate_schemas(safe=True)
            await self._ctx.db().execute_script(schema.SQLITE_DDL)

    async def close(self) -> None:
        """Close the connection."""
        with self._active():
            await self._ctx.close_connections()

    @asynccontextmanager
    async def ingest_tx(self) -> AsyncIterator[IngestTx]:
        """One transaction for one ingest batch."""
        with self._active():
            async with in_transaction("default") as conn:
                yield IngestTx(conn, self._sql)

    # -- registry ----------------------------------------------------------------------------

    async def load_registry(
        self,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Every gateway, device and point as dicts (for the in-memory registry)."""
        with self._active():
            gws = await Gateway.all().order_by("id").values()
            devs = await Device.all().order_by("id").values()
            pts = await Point.all().order_by("id").values()
        return gws, devs, pts

    async def upsert_gateway(self, name: str, **values: Any) -> int:
        """Create or update a gateway by name; return its id."""
        with self._active():
            gw, created = await Gateway.get_or_create(name=name, defaults=values)
            if not created and values:
                await Gateway.filter(id=gw.id).update(**values)
            return int(gw.id)

    async def update_gateway(self, gateway_id: int, **values: Any) -> None:
        """Update columns of a gateway."""
        with self._active():
            await Gateway.filter(id=gateway_id).update(**values)

    async def upsert_device(self, name: str, gateway_id: int, **values: Any) -> int:
        """Create or update a device by name; return its id."""
        with self._active():
            dev, created = await Device.get_or_create(
                name=name, defaults={"gateway_id": gateway_id, **values}
            )
            if not created:
                await Device.filter(id=dev.id).update(gateway_id=gateway_id, **values)
            return int(dev.id)

    async def upsert_point(self, device_id: int, name: str, **values: Any) -> int:
        """Create or update a point by (device, name); return its id."""
        with self._active():
            pt, created = await Point.get_or_create(
                device_id=device_id, name=name, defaults=values
            )
            if not created and values:
                await Point.filter(id=pt.id).update(**values)
            return int(pt.id)

    async def load_gaps(self) -> list[tuple[int, int, int, int, bool]]:
        """Every stored missing-seq range: ``(gateway_id, lo, hi, opened_ms, restart)``."""
        with self._active():
            _, rows = await self._ctx.db().execute_query(self._sql["load_gaps"])
        return [(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    # -- history -----------------------------------------------------------------------------

    async def history(
        self, point_id: int, start_ms: int, end_ms: int, limit: int, newest_first: bool
    ) -> list[tuple[int, float | None, int]]:
        """Samples of one point with ``start_ms <= ts_ms < end_ms``."""
        sql = self._sql["history_desc" if newest_first else "history_asc"]
        with self._active():
            _, rows = await self._ctx.db().execute_query(sql, [point_id, start_ms, end_ms, limit])
        return [(r[0], r[1], r[2]) for r in rows]

    async def count_samples(self) -> int:
        """How many samples are stored (tests, stats)."""
        with self._active():
            _, rows = await self._ctx.db().execute_query(self._sql["count_samples"])
        return int(rows[0][0])

    async def events(
        self, device: str | None, start_ms: int, end_ms: int, limit: int
    ) -> list[dict[str, Any]]:
        """Events newest first, optionally of one device."""
        with self._active():
            q = EventRecord.filter(ts_ms__gte=start_ms, ts_ms__lt=end_ms)
            if device is not None:
                q = q.filter(device=device)
            return await q.order_by("-ts_ms", "-id").limit(limit).values(
                "id", "gateway__name", "device", "kind", "active", "severity", "point",
                "detail", "ts_ms", "seq",
            )

    # -- commands ----------------------------------------------------------------------------

    async def insert_command(self, **values: Any) -> None:
        """Store a new command."""
        with self._active():
            await CommandRecord.create(**values)

    async def get_command(self, command_id: uuid.UUID) -> dict[str, Any] | None:
        """One command as a dict, or None."""
        with self._active():
            rows = await CommandRecord.filter(id=command_id).values(*_COMMAND_FIELDS)
        return rows[0] if rows else None

    async def list_commands(
        self, device: str | None, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Commands newest first."""
        with self._active():
            q = CommandRecord.all()
            if device is not None:
                q = q.filter(device=device)
            if status is not None:
                q = q.filter(status=status)
            return await q.order_by("-created_ms").limit(limit).values(*_COMMAND_FIELDS)

    async def finish_command(
        self, command_id: uuid.UUID, *, status: str, detail: str, at_ms: int, readback: Any
    ) -> bool:
        """Record a command's outcome if it is still pending; False if it was not."""
        with self._active():
            n = await CommandRecord.filter(id=command_id, status="pending").update(
                status=status, detail=detail, acked_ms=at_ms, readback=readback
            )
        return n > 0

    async def command_exists(self, command_id: uuid.UUID) -> bool:
        """Whether a command id is known."""
        with self._active():
            return await CommandRecord.filter(id=command_id).exists()

    async def expire_commands(self, now_ms: int) -> int:
        """Mark pending commands past their expiry as expired; return how many."""
        with self._active():
            return await CommandRecord.filter(status="pending", expires_ms__lte=now_ms).update(
                status="expired", detail="no ack before expiry"
            )

    # -- tokens ------------------------------------------------------------------------------

    async def create_token(self, name: str, role: str, token_hash: str, now_ms: int) -> int:
        """Store a token hash; return its id."""
        with self._active():
            t = await ApiToken.create(name=name, role=role, token_hash=token_hash, created_ms=now_ms)
        return int(t.id)

    async def token_name_taken(self, name: str) -> bool:
        """Whether a token of that name exists (revoked or not)."""
        with self._active():
            return await ApiToken.filter(name=name).exists()

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Every token (without hashes)."""
        with self._active():
            return await ApiToken.all().order_by("id").values(
                "id", "name", "role", "created_ms", "revoked_ms"
            )

    async def revoke_token(self, token_id: int, now_ms: int) -> bool:
        """Revoke a token; False if there is no such live token."""
        with self._active():
            n = await ApiToken.filter(id=token_id, revoked_ms=None).update(revoked_ms=now_ms)
        return n > 0

    async def find_token(self, token_hash: str) -> dict[str, Any] | None:
        """The live token with this hash, or None."""
        with self._active():
            rows = await ApiToken.filter(token_hash=token_hash, revoked_ms=None).values(
                "id", "name", "role"
            )
        return rows[0] if rows else None


_COMMAND_FIELDS = (
    "id", "gateway__name", "device", "point", "value", "status", "detail", "created_ms",
    "expires_ms", "acked_ms", "readback", "source",
)
