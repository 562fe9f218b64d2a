"""The lighting policy's data model (pydantic v2, frozen, unknown keys forbidden).

Every time instant in this package is an integer **epoch millisecond** (UTC), like `ts_ms` on the
wire; calendar dates are `datetime.date` ("YYYY-MM-DD" in JSON); clock times in profiles are local
wall-clock "HH:MM" in the city's time zone. The hub validates REST bodies with these models, so a
bad body fails with a precise `loc` (e.g. `("steps", 2, "level")`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from rules.evaluate import Evaluator

Level = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
"""A light level in percent of the lamp's rated output, 0 (off) .. 100."""

Id = Annotated[str, Field(min_length=1, max_length=128)]

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MMDD = re.compile(r"^(\d\d)-(\d\d)$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- lighting classes

#: Default minimum level (percent) per EN 13201-2 lighting class while the schedule has the lamp on.
#: EN 13201 specifies photometric requirements (M: road luminance, C: conflict-area illuminance,
#: P: pedestrian/low-speed illuminance), not dimming levels. These floors are the project's
#: judgement, in the spirit of CEN/TR 13201-1 adaptive lighting (dim at most ~two classes below
#: the design class): the busier and faster the road, the higher the floor. LED light output is
#: taken as proportional to level. Configurable per city (`PolicySettings.class_minimum`).
DEFAULT_CLASS_MINIMUM: dict[str, float] = {
    "M1": 50, "M2": 45, "M3": 40, "M4": 35, "M5": 30, "M6": 25,
    "C0": 50, "C1": 45, "C2": 40, "C3": 35, "C4": 30, "C5": 25,
    "P1": 30, "P2": 25, "P3": 20, "P4": 15, "P5": 10, "P6": 10,
}  # fmt: skip
LIGHTING_CLASSES = tuple(DEFAULT_CLASS_MINIMUM)


class Twilight(StrEnum):
    """Which solar event is "dusk"/"dawn": the sun's centre this many degrees below the horizon."""

    SUNSET = "sunset"  # 0.833 deg: upper limb on the horizon with standard refraction (sunset/sunrise)
    CIVIL = "civil"  # 6 deg: civil dusk/dawn (default: street lighting is needed from about here)
    NAUTICAL = "nautical"  # 12 deg

    @property
    def depression_deg(self) -> float:
        """Depression of the sun's centre below the geometric horizon, in degrees."""
        return {"sunset": 0.833, "civil": 6.0, "nautical": 12.0}[self.value]


class PowerModel(_Model):
    """Electrical power of an LED lamp at a level: linear in level above a floor, standby when off.

    P(level) = rated_w * (min_fraction + (1 - min_fraction) * level/100) for level > 0 (an LED
    driver's input power is close to linear in its output current, with losses that do not dim),
    and P(0) = rated_w * standby_fraction (the driver stays powered on a permanently live circuit).
    """

    min_fraction: Annotated[float, Field(ge=0, le=1)] = 0.08
    standby_fraction: Annotated[float, Field(ge=0, le=1)] = 0.005


class PolicySettings(_Model):
    """City-wide policy parameters."""

    timezone: str = "Europe/Paris"
    twilight: Twilight = Twilight.CIVIL
    #: Dusk/dawn are computed once per night per cell of this size (degrees of lat and lon);
    #: 0.05 deg moves dusk by at most ~12 s in longitude at mid latitudes.
    cell_deg: Annotated[float, Field(gt=0, le=10)] = 0.05
    class_minimum: dict[str, Level] = Field(default_factory=lambda: dict(DEFAULT_CLASS_MINIMUM))
    power: PowerModel = PowerModel()
    crisis_level: Level = 100.0

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {v!r}") from err
        return v

    @field_validator("class_minimum")
    @classmethod
    def _classes(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(LIGHTING_CLASSES))
        if unknown:
            raise ValueError(f"unknown lighting class(es) {unknown}; known: {', '.join(LIGHTING_CLASSES)}")
        return {**DEFAULT_CLASS_MINIMUM, **v}

    @property
    def tz(self) -> ZoneInfo:
        """The city's time zone (ZoneInfo caches instances by key)."""
        return ZoneInfo(self.timezone)


# --------------------------------------------------------------------------- profiles


class Step(_Model):
    """One switch point: at a local clock time "HH:MM", or at "dusk"/"dawn" plus `offset_min`.

    `ramp_min` is the duration of the linear fade from this step's level to the next step's level,
    starting when the next step is due (0 = switch at once).
    """

    at: str
    offset_min: Annotated[int, Field(ge=-720, le=720)] = 0
    level: Level
    ramp_min: Annotated[float, Field(ge=0, le=720)] = 0

    @field_validator("at")
    @classmethod
    def _at(cls, v: str) -> str:
        if v in ("dusk", "dawn") or _HHMM.match(v):
            return v
        raise ValueError(f'expected "HH:MM" (00:00..23:59), "dusk" or "dawn", got {v!r}')

    @model_validator(mode="after")
    def _offset_only_for_sun(self) -> Step:
        if self.offset_min and self.anchor == "clock":
            raise ValueError("offset_min applies to dusk/dawn steps only")
        return self

    @property
    def anchor(self) -> Literal["clock", "dusk", "dawn"]:
        """What the step's time is relative to."""
        return "clock" if ":" in self.at else self.at  # type: ignore[return-value]

    @property
    def night_minute(self) -> int:
        """For a clock step: minutes after the night's start (local noon): 12:00 -> 0, 11:59 -> 1439."""
        h, m = int(self.at[:2]), int(self.at[3:])
        return ((h - 12) % 24) * 60 + m


class Profile(_Model):
    """An ordered list of switch points for one night.

    Order rules (checked): clock steps in increasing night order (12:00 .. 11:59), dusk steps
    before dawn steps, offsets increasing within dusk steps and within dawn steps. Per night, a
    step never happens before a step listed before it: a clock step overtaken by an earlier-listed
    dusk (a "20:00" step after a 22:00 June dusk) takes effect at that dusk and replaces its
    level; a clock step at or after a dusk/dawn step listed after it is skipped (a "05:30" step
    after a 05:13 June dawn+10). Before the first step of a night the level is the last step's
    level (the "day level", usually 0).
    """

    id: Id
    name: str = ""
    steps: list[Step] = Field(min_length=1, max_length=48)

    @model_validator(mode="after")
    def _order(self) -> Profile:
        last_clock: int | None = None
        seen_dawn = False
        last_off: dict[str, int] = {}
        for i, s in enumerate(self.steps):
            if s.anchor == "clock":
                if last_clock is not None and s.night_minute <= last_clock:
                    raise ValueError(
                        f"steps[{i}]: clock steps must be in increasing night order (12:00 .. 11:59)"
                    )
                last_clock = s.night_minute
                continue
            if s.anchor == "dusk" and seen_dawn:
                raise ValueError(f"steps[{i}]: dusk steps must come before dawn steps")
            seen_dawn = seen_dawn or s.anchor == "dawn"
            if s.anchor in last_off and s.offset_min <= last_off[s.anchor]:
                raise ValueError(f"steps[{i}]: {s.anchor} offsets must increase")
            last_off[s.anchor] = s.offset_min
        return self

    @property
    def day_level(self) -> float:
        """The level before the night's first step and after the last (the last step's level)."""
        return self.steps[-1].level


# --------------------------------------------------------------------------- calendars


def _date_spec(v: str) -> str:
    m = _MMDD.match(v)
    if m:
        try:
            dt.date(2024, int(m[1]), int(m[2]))  # a leap year: "02-29" is a valid annual date
        except ValueError as err:
            raise ValueError(f"invalid annual date {v!r} (MM-DD)") from err
        return v
    try:
        dt.date.fromisoformat(v)
    except ValueError as err:
        raise ValueError(f'expected "YYYY-MM-DD" or annual "MM-DD", got {v!r}') from err
    return v


DateSpec = Annotated[str, Field(min_length=5, max_length=10)]


class CalendarRule(_Model):
    """A calendar exception: `profile` on the nights whose date matches every criterion given.

    The night of date D (D 12:00 .. D+1 12:00 local) is matched by D. `dates`: specific dates
    ("YYYY-MM-DD") or annual ones ("MM-DD"); `weekdays`: "mon".."sun"; `date_from`/`date_to`:
    an inclusive range, both "YYYY-MM-DD" or both "MM-DD" (annual; may wrap the year end, e.g.
    "12-20".."01-05"). At least one criterion is required.
    """

    name: str = ""
    profile: Id
    dates: list[DateSpec] = Field(default_factory=list)
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    date_from: DateSpec | None = None
    date_to: DateSpec | None = None

    @field_validator("dates")
    @classmethod
    def _dates(cls, v: list[str]) -> list[str]:
        return [_date_spec(d) for d in v]

    @field_validator("date_from", "date_to")
    @classmethod
    def _range_end(cls, v: str | None) -> str | None:
        return None if v is None else _date_spec(v)

    @model_validator(mode="after")
    def _criteria(self) -> CalendarRule:
        if (self.date_from is None) != (self.date_to is None):
            raise ValueError("date_from and date_to go together")
        if self.date_from is not None and self.date_to is not None:
            if len(self.date_from) != len(self.date_to):
                raise ValueError("date_from and date_to must both be YYYY-MM-DD or both MM-DD")
            if len(self.date_from) == 10 and self.date_from > self.date_to:
                raise ValueError("date_from is after date_to")
        if not (self.dates or self.weekdays or self.date_from):
            raise ValueError("a rule needs dates, weekdays or a date range")
        return self

    def matches(self, night: dt.date) -> bool:
        """True if the night of `night` satisfies every criterion of the rule."""
        iso = night.isoformat()
        mmdd = iso[5:]
        if self.dates and iso not in self.dates and mmdd not in self.dates:
            return False
        if self.weekdays and WEEKDAYS[night.weekday()] not in self.weekdays:
            return False
        if self.date_from is not None and self.date_to is not None:
            if len(self.date_from) == 10:
                return self.date_from <= iso <= self.date_to
            if self.date_from <= self.date_to:
                return self.date_from <= mmdd <= self.date_to
            return mmdd >= self.date_from or mmdd <= self.date_to  # wraps the year end
        return True


class Calendar(_Model):
    """A default profile plus ordered exceptions; the first matching rule wins."""

    id: Id
    name: str = ""
    default_profile: Id
    rules: list[CalendarRule] = Field(default_factory=list, max_length=256)

    def profile_for(self, night: dt.date) -> tuple[str, str]:
        """(profile id, why) for the night of `night`."""
        for i, r in enumerate(self.rules):
            if r.matches(night):
                return r.profile, f"calendar {self.id} rule {i}" + (f" ({r.name})" if r.name else "")
        return self.default_profile, f"calendar {self.id} default"


# --------------------------------------------------------------------------- zones and lamps


class Zone(_Model):
    """A node of the zone tree: municipality > district > street.

    A lamp belongs to one street. `calendar` and `presence` are inherited from the nearest
    ancestor that sets them (street, then district, then municipality, then the city's default).
    A street must have an EN 13201 `lighting_class`; other zones must not.
    """

    id: Id
    kind: Literal["municipality", "district", "street"]
    parent: Id | None = None
    name: str = ""
    lighting_class: Literal[
        "M1", "M2", "M3", "M4", "M5", "M6",
        "C0", "C1", "C2", "C3", "C4", "C5",
        "P1", "P2", "P3", "P4", "P5", "P6",
    ] | None = None  # fmt: skip
    calendar: Id | None = None
    presence: Id | None = None

    @model_validator(mode="after")
    def _shape(self) -> Zone:
        if self.kind == "street" and self.lighting_class is None:
            raise ValueError("a street needs a lighting_class (EN 13201 M1-M6, C0-C5, P1-P6)")
        if self.kind != "street" and self.lighting_class is not None:
            raise ValueError("only a street has a lighting_class")
        if self.kind == "municipality" and self.parent is not None:
            raise ValueError("a municipality has no parent")
        if self.kind != "municipality" and self.parent is None:
            raise ValueError(f"a {self.kind} needs a parent")
        return self


class Lamp(_Model):
    """A light point: on one street, at WGS84 coordinates, with its rated power."""

    id: Id
    street: Id
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    rated_w: float = Field(gt=0, le=10_000)
    group: Id | None = None
    #: The cabinet gateway that drives it (used to slice plans); None if not known yet.
    gateway: Id | None = None


class PresenceRule(_Model):
    """How a presence event raises the lamps around the sensor.

    The lamps raised are those on the sensor lamp's street within `reach_m` metres along the
    street (or `reach_lamps` lamps) on each side. With a known speed v (m/s) the reach ahead
    grows to max(reach, v * lookahead_s) (both sides if the heading is unknown); with a known
    heading the reach behind is reach * `behind_factor`. Raised lamps go to `level` for `hold_s`
    seconds, then fade back over `ramp_down_s`. Presence only raises: max(schedule, presence).
    """

    id: Id
    level: Level = 100.0
    hold_s: Annotated[float, Field(gt=0, le=3600)] = 60
    ramp_down_s: Annotated[float, Field(ge=0, le=3600)] = 10
    reach_m: Annotated[float | None, Field(ge=0, le=2000)] = None
    reach_lamps: Annotated[int | None, Field(ge=0, le=100)] = None
    lookahead_s: Annotated[float, Field(ge=0, le=120)] = 0
    behind_factor: Annotated[float, Field(ge=0, le=1)] = 0.5
    max_reach_m: Annotated[float, Field(gt=0, le=5000)] = 500

    @model_validator(mode="after")
    def _reach(self) -> PresenceRule:
        if (self.reach_m is None) == (self.reach_lamps is None):
            raise ValueError("give exactly one of reach_m and reach_lamps")
        return self


class Target(_Model):
    """What an override addresses: one lamp, a lamp group, or a zone (and everything below it)."""

    kind: Literal["lamp", "group", "zone"]
    id: Id


class Override(_Model):
    """A manual override, active from `start_ms` (inclusive) to `expiry_ms` (exclusive; None = until
    cleared). Among active overrides on a lamp the latest `created_ms` wins (ties: larger id).
    Clearing (deleting) it returns the lamp to the programme.
    """

    id: Id
    target: Target
    level: Level
    start_ms: int = Field(ge=0)
    expiry_ms: Annotated[int | None, Field(ge=0)] = None
    created_ms: int = Field(ge=0)
    reason: str = ""

    @model_validator(mode="after")
    def _span(self) -> Override:
        if self.expiry_ms is not None and self.expiry_ms <= self.start_ms:
            raise ValueError("expiry_ms must be after start_ms")
        return self

    def active(self, t_ms: int) -> bool:
        """True if the override applies at `t_ms`."""
        return self.start_ms <= t_ms and (self.expiry_ms is None or t_ms < self.expiry_ms)


class Crisis(_Model):
    """An emergency route: every lamp on `streets` goes to the crisis level (100%) while active."""

    id: Id
    name: str = ""
    streets: list[Id] = Field(min_length=1)
    start_ms: int = Field(ge=0)
    end_ms: Annotated[int | None, Field(ge=0)] = None

    @model_validator(mode="after")
    def _span(self) -> Crisis:
        if self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ValueError("end_ms must be after start_ms")
        return self

    def active(self, t_ms: int) -> bool:
        """True if the crisis is declared and not closed at `t_ms`."""
        return self.start_ms <= t_ms and (self.end_ms is None or t_ms < self.end_ms)


# --------------------------------------------------------------------------- the whole policy


Loc = tuple[str | int, ...]


def check_references(p: PolicyData) -> list[tuple[Loc, str, object]]:
    """Every broken cross reference or duplicate id of a policy, as (loc, message, offending value)."""
    errors: list[tuple[Loc, str, object]] = []
    for name in ("profiles", "calendars", "zones", "lamps", "presence_rules", "overrides", "crises"):
        seen: set[str] = set()
        for i, x in enumerate(getattr(p, name)):
            if x.id in seen:
                errors.append(((name, i, "id"), f"duplicate id {x.id!r}", x.id))
            seen.add(x.id)
    profiles = {x.id for x in p.profiles}
    calendars = {c.id for c in p.calendars}
    zones = {z.id: z for z in p.zones}
    rules = {r.id for r in p.presence_rules}
    if p.default_calendar not in calendars:
        errors.append((("default_calendar",), f"no calendar {p.default_calendar!r}", p.default_calendar))
    for i, c in enumerate(p.calendars):
        if c.default_profile not in profiles:
            errors.append(
                (("calendars", i, "default_profile"), f"no profile {c.default_profile!r}", c.default_profile)
            )
        for j, r in enumerate(c.rules):
            if r.profile not in profiles:
                errors.append(
                    (("calendars", i, "rules", j, "profile"), f"no profile {r.profile!r}", r.profile)
                )
    parent_kind = {"street": "district", "district": "municipality"}
    for i, z in enumerate(p.zones):
        if z.parent is not None:
            parent = zones.get(z.parent)
            if parent is None or parent.kind != parent_kind[z.kind]:
                errors.append((("zones", i, "parent"), f"no {parent_kind[z.kind]} {z.parent!r}", z.parent))
        if z.calendar is not None and z.calendar not in calendars:
            errors.append((("zones", i, "calendar"), f"no calendar {z.calendar!r}", z.calendar))
        if z.presence is not None and z.presence not in rules:
            errors.append((("zones", i, "presence"), f"no presence rule {z.presence!r}", z.presence))
    for i, lamp in enumerate(p.lamps):
        s = zones.get(lamp.street)
        if s is None or s.kind != "street":
            errors.append((("lamps", i, "street"), f"no street {lamp.street!r}", lamp.street))
    for i, cr in enumerate(p.crises):
        for j, sid in enumerate(cr.streets):
            s = zones.get(sid)
            if s is None or s.kind != "street":
                errors.append((("crises", i, "streets", j), f"no street {sid!r}", sid))
    return errors


class PolicyData(_Model):
    """Everything the policy needs: settings, profiles, calendars, zones, lamps, rules, overrides.

    Cross references are checked (a street's district exists, a calendar's profiles exist, ...),
    each error naming the list index (loc) of the offending item.
    """

    settings: PolicySettings = PolicySettings()
    #: The calendar of streets whose zones set none.
    default_calendar: Id
    profiles: list[Profile] = Field(default_factory=list)
    calendars: list[Calendar] = Field(default_factory=list)
    zones: list[Zone] = Field(default_factory=list)
    lamps: list[Lamp] = Field(default_factory=list)
    presence_rules: list[PresenceRule] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    crises: list[Crisis] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> PolicyData:
        errors = check_references(self)
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(type=PydanticCustomError("reference", msg), loc=loc, input=value)
                    for loc, msg, value in errors
                ],
            )
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy without the cached lookups and evaluator; with `update`, validated again (so
        references are checked and, for a Plan, the version must match the new content)."""
        if update:
            return type(self).model_validate(
                {**{k: getattr(self, k) for k in type(self).model_fields}, **update}
            )
        copied = super().model_copy(deep=deep)
        for name in _CACHED:
            copied.__dict__.pop(name, None)
        return copied

    # Lookups, computed once per (immutable) instance.

    @functools.cached_property
    def lamp_by_id(self) -> dict[str, Lamp]:
        """Lamps by id."""
        return {x.id: x for x in self.lamps}

    @functools.cached_property
    def zone_by_id(self) -> dict[str, Zone]:
        """Zones by id."""
        return {x.id: x for x in self.zones}

    @functools.cached_property
    def profile_by_id(self) -> dict[str, Profile]:
        """Profiles by id."""
        return {x.id: x for x in self.profiles}

    @functools.cached_property
    def calendar_by_id(self) -> dict[str, Calendar]:
        """Calendars by id."""
        return {x.id: x for x in self.calendars}

    @functools.cached_property
    def presence_rule_by_id(self) -> dict[str, PresenceRule]:
        """Presence rules by id."""
        return {x.id: x for x in self.presence_rules}

    def ancestors(self, zone_id: str) -> list[str]:
        """The zone and its ancestors, nearest first (street, district, municipality)."""
        out: list[str] = []
        z = self.zone_by_id.get(zone_id)
        while z is not None:
            out.append(z.id)
            z = self.zone_by_id.get(z.parent) if z.parent else None
        return out

    def _inherited(self, street_id: str, attr: str) -> str | None:
        for zid in self.ancestors(street_id):
            v: str | None = getattr(self.zone_by_id[zid], attr)
            if v is not None:
                return v
        return None

    def calendar_of(self, street_id: str) -> str:
        """The calendar id governing a street (nearest zone that sets one, else the default)."""
        return self._inherited(street_id, "calendar") or self.default_calendar

    def presence_rule_of(self, street_id: str) -> str | None:
        """The presence rule id governing a street, or None if the street has no presence."""
        return self._inherited(street_id, "presence")

    def class_minimum(self, street_id: str) -> float:
        """The minimum level (percent) of a street's lighting class while the schedule is on."""
        cls = self.zone_by_id[street_id].lighting_class
        assert cls is not None
        return self.settings.class_minimum[cls]

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        """The memoising evaluator of this policy (dusk/dawn and night timelines computed once)."""
        from rules.evaluate import Evaluator

        return Evaluator(self)


_CACHED = ("lamp_by_id", "zone_by_id", "profile_by_id", "calendar_by_id", "presence_rule_by_id", "evaluator")


class City(PolicyData):
    """The whole city's policy, as the hub stores it."""
