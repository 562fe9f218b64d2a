"""``citynerve-hub``: run the hub, manage API tokens, check a config file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from cnconfig import EXIT_BAD_CONFIG, ConfigError

from .app import create_app
from .config import HubSettings, load_settings, log_level
from .storage import Storage
from .tokens import ROLES, create_token

log = logging.getLogger("hub")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citynerve-hub", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the hub")
    run.add_argument("--config", required=True)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    tok = sub.add_parser("token", help="manage REST API tokens")
    tsub = tok.add_subparsers(dest="tcmd", required=True)
    create = tsub.add_parser("create", help="create a token and print it (once) on stdout")
    create.add_argument("--config", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True)
    lst = tsub.add_parser("list", help="list tokens")
    lst.add_argument("--config", required=True)
    rev = tsub.add_parser("revoke", help="revoke a token by id")
    rev.add_argument("--config", required=True)
    rev.add_argument("id", type=int)
    return p


def _settings(path: str) -> HubSettings | None:
    try:
        return load_settings(path)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        return None


async def _serve(settings: HubSettings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        log.info("citynerve hub: REST API on http://%s:%d/api/v1 (database %s)",
                 settings.http.host, settings.http.port, settings.db_url.split("?", 1)[0])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("citynerve hub: shutting down")
    finally:
        await runner.cleanup()


async def _with_storage(settings: HubSettings, fn: Callable[[Storage], Awaitable[int]]) -> int:
    storage = Storage(settings.db_url)
    await storage.open()
    try:
        return await fn(storage)
    finally:
        await storage.close()


async def _token_create(s: Storage, name: str, role: str) -> int:
    try:
        _, token = await create_token(s, name, role)
    except ValueError as err:
        print(f"citynerve-hub: {err}", file=sys.stderr)
        return 1
    print(token)
    return 0


async def _token_list(s: Storage) -> int:
    for t in await s.list_tokens():
        state = "revoked" if t["revoked_ms"] else "active"
        print(f"{t['id']}\t{t['name']}\t{t['role']}\t{state}")
    return 0


async def _token_revoke(s: Storage, token_id: int) -> int:
    if await s.revoke_token(token_id, time.time_ns() // 1_000_000):
        return 0
    print(f"citynerve-hub: no live token with id {token_id}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``citynerve-hub`` console script."""
    args = _parser().parse_args(argv)
    path = args.file if args.cmd == "check-config" else args.config
    settings = _settings(path)
    if settings is None:
        return EXIT_BAD_CONFIG
    if args.cmd == "check-config":
        print(f"{path}: ok")
        return 0
    logging.basicConfig(
        level=log_level(settings),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.cmd == "run":
        asyncio.run(_serve(settings))
        return 0
    if args.tcmd == "create":
        return asyncio.run(_with_storage(settings, lambda s: _token_create(s, args.name, args.role)))
    if args.tcmd == "list":
        return asyncio.run(_with_storage(settings, _token_list))
    return asyncio.run(_with_storage(settings, lambda s: _token_revoke(s, args.id)))


if __name__ == "__main__":
    sys.exit(main())
