"""From desired levels to bus commands: group merging and sending only what changed.

A group (a DALI group or broadcast device, whose members the edge's birth lists) can set all its
members with one command. `merge_groups` covers every lamp exactly once: it takes groups, the
largest first, whose members all want the same level and are not covered yet, and commands the
remaining lamps one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def command_level(level: float) -> int:
    """The level a lamp is commanded to: whole percent (Modbus registers and DALI arc levels both
    take it), rounded the same way on the hub and the edge so both send the same value."""
    return round(level)


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


def merge_groups(
    levels: Mapping[str, float],
    groups: Mapping[str, Sequence[str]],
    tolerance: float = 0.0,
) -> list[tuple[str, float]]:
    """A shortest list of (target, level) covering each lamp of `levels` exactly once.

    Greedy, largest agreeing group first: minimal when the groups are nested or disjoint (a
    broadcast containing street groups, the usual DALI layout: a larger agreeing group always
    replaces the smaller ones inside it); a good cover otherwise (minimum set cover is NP-hard).

    A group is used only if every member is in `levels` and all agree (within `tolerance`; the
    command then carries the first member's level in sorted order). Deterministic output:
    group commands first (by size desc, id), then single lamps by id.
    """
    covered: set[str] = set()
    out: list[tuple[str, float]] = []
    for gid, members in sorted(groups.items(), key=lambda kv: (-len(set(kv[1])), kv[0])):
        ms = sorted(set(members))
        if len(ms) < 2 or any(m not in levels or m in covered for m in ms):
            continue
        first = levels[ms[0]]
        if all(_close(levels[m], first, tolerance) for m in ms):
            out.append((gid, first))
            covered.update(ms)
    out.extend((lid, levels[lid]) for lid in sorted(levels) if lid not in covered)
    return out


def diff_commands(
    desired: Mapping[str, float],
    last_sent: Mapping[str, float],
    groups: Mapping[str, Sequence[str]] | None = None,
    tolerance: float = 0.0,
) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Commands for the lamps whose desired level differs from the last sent one (or never sent),
    merged into group commands where a whole group wants one level and at least one member
    changed; and the new last-sent map (`last_sent` updated with what the commands set)."""
    changed = {k for k, v in desired.items() if k not in last_sent or not _close(last_sent[k], v, tolerance)}
    new_last = dict(last_sent)
    if not changed:
        return [], new_last
    covered: set[str] = set()
    out: list[tuple[str, float]] = []
    for gid, members in sorted((groups or {}).items(), key=lambda kv: (-len(set(kv[1])), kv[0])):
        ms = sorted(set(members))
        if len(ms) < 2 or any(m not in desired or m in covered for m in ms) or not changed.intersection(ms):
            continue
        first = desired[ms[0]]
        if all(_close(desired[m], first, tolerance) for m in ms):
            out.append((gid, first))
            covered.update(ms)
            for m in ms:
                new_last[m] = first
    for lid in sorted(changed - covered):
        out.append((lid, desired[lid]))
        new_last[lid] = desired[lid]
    return out, new_last
