"""Technician tools on one DALI bus: commissioning, query, fade, identify, group, scene.

Each tool is a python-dali sequence run as one transaction at operator priority through the
driver (so, in the edge daemon, through the bus's scheduler, ahead of polling). Configuration
commands are send-twice: python-dali sets the LUBA "send twice" flag, so the repeat follows
within the 100 ms of IEC 62386-102 §9.3. Results are plain JSON-able dicts.

``scan`` is python-dali's ``sequences.Commissioning`` (IEC 62386-102 §9.14: INITIALISE,
RANDOMISE, a binary search with SEARCHADDR H/M/L and COMPARE, PROGRAM SHORT ADDRESS, VERIFY
SHORT ADDRESS, WITHDRAW, TERMINATE), then each gear found is queried for its inventory.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from dali import address, sequences
from dali.command import Command
from dali.gear import general as gg

from drivers.base import PointError, ProtocolError

from .curve import Curve, arc_to_percent, percent_to_arc

if TYPE_CHECKING:
    from .driver import DaliDriver

Progress = Callable[[dict[str, Any]], None]
Seq = Generator[Any, Any, Any]
MASK = 0xFF
# IEC 62386-102 Table 5 (fade time, s) and Table 6 (fade rate, steps/s)
FADE_TIME_S = (0.0, *(0.5 * math.sqrt(2**n) for n in range(1, 16)))
FADE_RATE_STEPS_S = (0.0, *(506 / math.sqrt(2**n) for n in range(1, 16)))
STATUS_BITS = (
    "gear_failure",
    "lamp_failure",
    "lamp_on",
    "limit_error",
    "fade_running",
    "reset_state",
    "missing_short_address",
    "power_failure",
)
# IEC 62386-102 §11.3.7: version 2.0 (DALI-2) is encoded as 8; IDENTIFY DEVICE is DALI-2
VERSION_DALI2 = 8


def _ask(cmd: Command) -> Seq:
    """One query inside a sequence: its answer, None for no answer (NO); garbled -> ProtocolError."""
    r = yield cmd
    raw = None if r is None else r.raw_value
    if raw is None:
        return None
    if raw.error:
        raise ProtocolError(f"garbled answer to {cmd} (framing error: several gear answered, or noise)")
    return int(raw.as_integer)


def _must(cmd: Command, short: int) -> Seq:
    value = yield from _ask(cmd)
    if value is None:
        raise PointError(f"gear A{short} did not answer {cmd}: is it there? (citynerve-edge scan dali)")
    return value


def gear_info(short: int, *, scenes: bool = False, curve: Curve = "logarithmic") -> Seq:
    """A sequence: what one gear says about itself (level, status, types, groups, fades ...)."""
    addr = address.GearShort(short)
    status = yield from _must(gg.QueryStatus(addr), short)
    actual = yield from _must(gg.QueryActualLevel(addr), short)
    version = yield from _must(gg.QueryVersionNumber(addr), short)
    first = yield from _must(gg.QueryDeviceType(addr), short)
    types: list[int] = [first] if first < 254 else []
    while first == MASK and len(types) < 16:  # several types: QUERY NEXT DEVICE TYPE until 254
        nxt = yield from _must(gg.QueryNextDeviceType(addr), short)
        if nxt == 254:
            break
        types.append(nxt)
    low = yield from _must(gg.QueryGroupsZeroToSeven(addr), short)
    high = yield from _must(gg.QueryGroupsEightToFifteen(addr), short)
    fade = yield from _must(gg.QueryFadeTimeFadeRate(addr), short)
    lo_level = yield from _must(gg.QueryMinLevel(addr), short)
    hi_level = yield from _must(gg.QueryMaxLevel(addr), short)
    rnd = 0
    for q in (gg.QueryRandomAddressH, gg.QueryRandomAddressM, gg.QueryRandomAddressL):
        rnd = rnd << 8 | (yield from _must(q(addr), short))
    info: dict[str, Any] = {
        "address": short,
        "level": None if actual == MASK else arc_to_percent(actual, curve),
        "arc": actual,
        "status": {name: bool(status >> i & 1) for i, name in enumerate(STATUS_BITS)},
        "version": f"{version >> 2}.{version & 3}",
        "dali2": version >= VERSION_DALI2,
        "device_types": types,
        "groups": [g for g in range(16) if (high << 8 | low) >> g & 1],
        "fade_time": fade >> 4,
        "fade_time_s": round(FADE_TIME_S[fade >> 4], 2),
        "fade_rate": fade & 0x0F,
        "min_level": arc_to_percent(lo_level, curve),
        "max_level": arc_to_percent(hi_level, curve),
        "random_address": f"0x{rnd:06X}",
    }
    if scenes:
        levels = {}
        for n in range(16):
            level = yield from _must(gg.QuerySceneLevel(addr, n), short)
            if level != MASK:
                levels[n] = arc_to_percent(level, curve)
        info["scenes"] = levels
    return info


def _observe(seq: Seq, present: list[int], programmed: list[int]) -> Seq:
    """Pass python-dali's Commissioning through, noting gear already there and addresses given."""
    response = None
    while True:
        try:
            cmd = seq.send(response)
        except StopIteration as stop:
            return stop.value
        response = yield cmd
        if isinstance(cmd, gg.QueryControlGearPresent) and response is not None and response.value:
            present.append(cmd.destination.address)
        elif isinstance(cmd, gg.ProgramShortAddress) and cmd.address != "MASK":
            programmed.append(cmd.address)


def _short(args: dict[str, Any]) -> int:
    a = args.get("address")
    if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= 63:
        raise PointError(f"address must be a short address 0-63, got {a!r}")
    return a


def _target(args: dict[str, Any]) -> tuple[address.GearAddress, int | None, str]:
    """The address of ``address`` (short), ``group`` or ``broadcast``; the short one if any."""
    given = [k for k in ("address", "group") if args.get(k) is not None] + (
        ["broadcast"] if args.get("broadcast") else []
    )
    if len(given) != 1:
        raise PointError("give exactly one of address (0-63), group (0-15) or broadcast")
    if given[0] == "address":
        short = _short(args)
        return address.GearShort(short), short, f"A{short}"
    if given[0] == "group":
        g = args["group"]
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= 15:
            raise PointError(f"group must be 0-15, got {g!r}")
        return address.GearGroup(g), None, f"G{g}"
    return address.GearBroadcast(), None, "broadcast"


def _code(args: dict[str, Any], key: str, low: int) -> int | None:
    v = args.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 15:
        raise PointError(f"{key} must be {low}-15, got {v!r}")
    return v


async def scan(driver: DaliDriver, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Find the gear on the bus, give the unaddressed ones free short addresses, list them all.

    ``readdress``: clear every short address first and number all gear anew. ``addresses``:
    the short addresses that may be given (default: all free ones).
    """
    present: list[int] = []
    programmed: list[int] = []
    free = args.get("addresses")
    if free is not None and (
        not isinstance(free, list) or not all(isinstance(a, int) and 0 <= a <= 63 for a in free)
    ):
        raise PointError(f"addresses must be a list of short addresses 0-63, got {free!r}")

    def on_progress(p: Any) -> None:
        if isinstance(p, sequences.progress):
            progress({"message": p.message, "completed": p.completed, "size": p.size})
        else:
            progress({"message": str(p)})

    commissioning = sequences.Commissioning(available_addresses=free, readdress=bool(args.get("readdress")))
    await driver.transaction("scan", _observe(commissioning, present, programmed), progress=on_progress)
    found = sorted(set(present) | set(programmed))
    gear = []
    for i, short in enumerate(found):
        progress({"message": f"reading gear A{short}", "completed": i, "size": len(found)})
        try:
            info = await driver.transaction(f"A{short}", gear_info(short))
        except ProtocolError as err:  # e.g. two gear at one address: say so, go on
            info = {
                "address": short,
                "error": f"{err}; several gear at A{short}? scan with --readdress",
            }
        info["new"] = short in programmed
        gear.append(info)
    return {
        "gear": gear,
        "programmed": sorted(programmed),
        "bus": driver.bus.id,
        "interface": driver.bus.interface,
        "serial_port": driver.bus.serial_port,
    }


async def query(driver: DaliDriver, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Everything one gear says about itself, scenes included."""
    short = _short(args)
    return dict(await driver.transaction(f"A{short}", gear_info(short, scenes=True, curve=_curve(args))))


def _curve(args: dict[str, Any]) -> Curve:
    curve = args.get("curve", "logarithmic")
    if curve not in ("logarithmic", "linear"):
        raise PointError(f"curve must be logarithmic or linear, got {curve!r}")
    return curve  # type: ignore[no-any-return]


async def fade(driver: DaliDriver, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """SET FADE TIME and/or SET FADE RATE (send-twice, with DTR0), read back from a short address."""
    addr, short, where = _target(args)
    time_code, rate_code = _code(args, "fade_time", 0), _code(args, "fade_rate", 1)
    if time_code is None and rate_code is None:
        raise PointError("give fade_time (0-15) and/or fade_rate (1-15)")

    def seq() -> Seq:
        if time_code is not None:
            yield gg.DTR0(time_code)
            yield gg.SetFadeTime(addr)
        if rate_code is not None:
            yield gg.DTR0(rate_code)
            yield gg.SetFadeRate(addr)
        if short is None:
            return None
        return (yield from _must(gg.QueryFadeTimeFadeRate(addr), short))

    back = await driver.transaction(where, seq())
    result: dict[str, Any] = {"target": where}
    if back is not None:
        if (time_code is not None and back >> 4 != time_code) or (
            rate_code is not None and back & 0x0F != rate_code
        ):
            raise PointError(
                f"{where} did not take the fade setting: it reads time {back >> 4}, rate {back & 15}"
            )
        time_code, rate_code = back >> 4, back & 0x0F
    if time_code is not None:
        result.update(fade_time=time_code, fade_time_s=round(FADE_TIME_S[time_code], 2))
    if rate_code is not None:
        result.update(fade_rate=rate_code, fade_rate_steps_s=round(FADE_RATE_STEPS_S[rate_code], 1))
    return result


async def identify(driver: DaliDriver, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Make a lamp blink: IDENTIFY DEVICE on DALI-2 gear, else OFF/RECALL MAX a few times."""
    short = _short(args)
    addr = address.GearShort(short)
    blinks = args.get("blinks", 3)
    if isinstance(blinks, bool) or not isinstance(blinks, int) or not 1 <= blinks <= 20:
        raise PointError(f"blinks must be 1-20, got {blinks!r}")

    def seq() -> Seq:
        version = yield from _must(gg.QueryVersionNumber(addr), short)
        if version >= VERSION_DALI2:
            yield gg.IdentifyDevice(addr)  # the gear runs its own identification (~10 s)
            return "IDENTIFY DEVICE"
        level = yield from _must(gg.QueryActualLevel(addr), short)
        for _ in range(blinks):  # a DALI-1 gear: toggle it by hand, then put the level back
            yield gg.Off(addr)
            yield sequences.sleep(0.4)
            yield gg.RecallMaxLevel(addr)
            yield sequences.sleep(0.4)
        if level != MASK:
            yield gg.DAPC(addr, level)
        return f"toggled OFF/RECALL MAX {blinks} times"

    how = await driver.transaction(f"A{short}", seq())
    return {"target": f"A{short}", "method": how}


async def group(driver: DaliDriver, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """ADD TO GROUP / REMOVE FROM GROUP (send-twice), read back the gear's groups."""
    short = _short(args)
    addr = address.GearShort(short)
    g = args.get("group")
    if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= 15:
        raise PointError(f"group must be 0-15, got {g!r}")
    add = args.get("action", "add")
    if add not in ("add", "remove"):
        raise PointError(f"action must be add or remove, got {add!r}")

    def seq() -> Seq:
        yield (gg.AddToGroup if add == "add" else gg.RemoveFromGroup)(addr, g)
        low = yield from _must(gg.QueryGroupsZeroToSeven(addr), short)
        high = yield from _must(gg.QueryGroupsEightToFifteen(addr), short)
        return [n for n in range(16) if (high << 8 | low) >> n & 1]

    groups = await driver.transaction(f"A{short}", seq())
    if (g in groups) != (add == "add"):
        raise PointError(f"A{short} did not take {add} group {g}: its groups are {groups}")
    return {"target": f"A{short}", "groups": groups}


async def scene(driver: DaliDriver, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Store a level as scene N (STORE DTR AS SCENE), remove scene N, or GO TO SCENE N."""
    addr, short, where = _target(args)
    ops = [k for k in ("store", "remove", "go") if args.get(k) is not None]
    if len(ops) != 1:
        raise PointError("give exactly one of store (with level), remove or go")
    op = ops[0]
    n = _code(args, op, 0)
    assert n is not None
    curve = _curve(args)
    arc = None
    if op == "store":
        level = args.get("level")
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level <= 100:
            raise PointError(f"level must be 0-100 %, got {level!r}")
        arc = percent_to_arc(float(level), curve)

    def seq() -> Seq:
        if op == "go":
            yield gg.GoToScene(addr, n)
            return None
        if op == "store":
            yield gg.DTR0(arc)
            yield gg.SetScene(addr, n)
        else:
            yield gg.RemoveFromScene(addr, n)
        if short is None:
            return None
        return (yield from _must(gg.QuerySceneLevel(addr, n), short))

    back = await driver.transaction(where, seq())
    want = arc if op == "store" else MASK
    if op != "go" and back is not None and back != want:
        raise PointError(f"{where} did not take scene {n}: it reads {back}")
    result: dict[str, Any] = {"target": where, "scene": n, "op": op}
    if op == "store":
        result["level"] = arc_to_percent(arc or 0, curve)
    return result


ACTIONS: dict[str, Callable[[DaliDriver, dict[str, Any], Progress], Awaitable[dict[str, Any]]]] = {
    "scan": scan,
    "query": query,
    "fade": fade,
    "identify": identify,
    "group": group,
    "scene": scene,
}


async def run(driver: DaliDriver, action: str, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Run one tool by name; PointError for an unknown one or bad arguments."""
    fn = ACTIONS.get(action)
    if fn is None:
        raise PointError(f"unknown dali tool {action!r} (known: {', '.join(ACTIONS)})")
    return await fn(driver, args, progress)
