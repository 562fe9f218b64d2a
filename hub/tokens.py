"""API tokens: generation, hashing and the role order."""

from __future__ import annotations

import hashlib
import secrets
import time

from .storage import Storage

PREFIX = "cnh_"
ROLES = ("viewer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}


def new_token() -> str:
    """A fresh random token with a recognisable prefix (for secret scanners and humans)."""
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The SHA-256 hex digest we store instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` is at least ``needed`` (viewer < operator < admin)."""
    return RANK.get(role, -1) >= RANK[needed]


async def create_token(storage: Storage, name: str, role: str) -> tuple[int, str]:
    """Store a new token; return its id and the token (shown once, never stored)."""
    if role not in RANK:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if await storage.token_name_taken(name):
        raise ValueError(f"a token named {name!r} already exists")
    token = new_token()
    tid = await storage.create_token(name, role, token_hash(token), int(time.time() * 1000))
    return tid, token
