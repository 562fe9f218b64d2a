"""A small city for the rules tests: one municipality, two districts, four streets of lamps."""

from __future__ import annotations

import copy
import datetime as dt
import math
from typing import Any

from rules import City, local_ms

PARIS_STEPS: list[dict[str, Any]] = [
    {"at": "dusk", "offset_min": -10, "level": 100},
    {"at": "23:00", "level": 70, "ramp_min": 5},
    {"at": "01:00", "level": 40},
    {"at": "05:30", "level": 70},
    {"at": "dawn", "offset_min": 10, "level": 0},
]

# street id, class, presence rule, start (lat, lon), bearing deg, lamps, spacing m
STREETS = [
    ("s-avenue", "M3", None, (47.3200, 5.0400), 90.0, 12, 35.0),
    ("s-square", "C2", None, (47.3210, 5.0420), 0.0, 6, 25.0),
    ("s-lane", "P4", "walk", (47.3230, 5.0380), 45.0, 10, 30.0),
    ("s-path", "P6", "walk", (47.3250, 5.0410), 135.0, 8, 28.0),
]


def lamp_positions(
    start: tuple[float, float], bearing: float, n: int, spacing: float
) -> list[tuple[float, float]]:
    """n positions from `start` every `spacing` metres along `bearing` (flat earth, fine at 500 m)."""
    lat0, lon0 = start
    k = math.cos(math.radians(lat0))
    out = []
    for i in range(n):
        d = i * spacing
        north = d * math.cos(math.radians(bearing))
        east = d * math.sin(math.radians(bearing))
        out.append((lat0 + math.degrees(north / 6_371_000), lon0 + math.degrees(east / (6_371_000 * k))))
    return out


def city_dict(**extra: Any) -> dict[str, Any]:
    """The city as plain data (what a REST client would send)."""
    zones: list[dict[str, Any]] = [
        {"id": "m-dijon", "kind": "municipality", "name": "Dijon"},
        {"id": "d-centre", "kind": "district", "parent": "m-dijon"},
        {"id": "d-north", "kind": "district", "parent": "m-dijon", "calendar": "north"},
    ]
    lamps: list[dict[str, Any]] = []
    for k, (sid, cls, presence, start, bearing, n, spacing) in enumerate(STREETS):
        zones.append(
            {
                "id": sid,
                "kind": "street",
                "parent": "d-centre" if k < 2 else "d-north",
                "lighting_class": cls,
                **({"presence": presence} if presence else {}),
            }
        )
        for i, (lat, lon) in enumerate(lamp_positions(start, bearing, n, spacing)):
            lamps.append(
                {
                    "id": f"{sid}-{i:02d}",
                    "street": sid,
                    "lat": lat,
                    "lon": lon,
                    "rated_w": 60.0 + 10 * k,
                    "group": f"g-{sid}-{i // 4}",
                    "gateway": "gw-a" if k < 2 else "gw-b",
                }
            )
    d: dict[str, Any] = {
        "default_calendar": "std",
        "profiles": [
            {"id": "std", "steps": PARIS_STEPS},
            {
                "id": "deep",
                "steps": [
                    {"at": "dusk", "level": 80},
                    {"at": "22:00", "level": 30, "ramp_min": 10},
                    {"at": "00:30", "level": 0},
                    {"at": "dawn", "offset_min": -30, "level": 30},
                    {"at": "dawn", "level": 0},
                ],
            },
            {
                "id": "market",
                "steps": [
                    {"at": "dusk", "offset_min": -20, "level": 100},
                    {"at": "02:00", "level": 50},
                    {"at": "dawn", "offset_min": 10, "level": 0},
                ],
            },
        ],
        "calendars": [
            {
                "id": "std",
                "default_profile": "std",
                "rules": [
                    {
                        "name": "Christmas market",
                        "profile": "market",
                        "weekdays": ["fri", "sat"],
                        "date_from": "11-28",
                        "date_to": "12-24",
                    }
                ],
            },
            {"id": "north", "default_profile": "deep"},
        ],
        "zones": zones,
        "lamps": lamps,
        "presence_rules": [
            {"id": "walk", "level": 80, "hold_s": 60, "ramp_down_s": 20, "reach_m": 65, "lookahead_s": 8}
        ],
    }
    d.update(extra)
    return copy.deepcopy(d)  # callers edit it freely


def make_city(**extra: Any) -> City:
    """The validated test city."""
    return City.model_validate(city_dict(**extra))


def at(day: dt.date, hh: int, mm: int = 0) -> int:
    """Epoch ms of a Paris wall time."""
    from zoneinfo import ZoneInfo

    return local_ms(day, hh, mm, ZoneInfo("Europe/Paris"))
