"""The astronomical clock: the night of a date and its dusk and dawn, from the sun's elevation.

A night spans local noon to local noon: the night of date D runs from D 12:00 to D+1 12:00 in
the city's time zone (23 or 25 hours on DST-change nights). Dusk is the first instant of the
night when the sun's centre goes below -depression degrees (Twilight: sunset 0.833, civil 6,
nautical 12), dawn the last instant it comes back above. The elevation comes from astral
(`astral.sun.elevation`, geometric, without refraction; the sunset depression of 0.833 deg
already includes standard refraction), scanned every 10 minutes over the night and refined by
bisection to ~1 s, which is correct whatever the calendar date of the event (after midnight at
high latitudes) and across DST changes (all arithmetic in UTC).

High latitudes (documented behaviour):
- the sun never goes below the threshold during the night (midnight sun at 70 N in June with
  civil twilight): `dark` is False, `dusk_ms`/`dawn_ms` are None, and lamps stay at the
  profile's day level all night (every dusk/dawn-anchored step and the clock steps between them
  are skipped);
- the sun is already below the threshold at the night's start (polar night): dusk = the night's
  start; still below at the night's end: dawn = the night's end. The lamps then follow the
  profile from noon to noon.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import elevation

from rules.model import Twilight

_SCAN_MS = 10 * 60_000
_PRECISION_MS = 1_000


def night_of(t_ms: int, tz: ZoneInfo) -> dt.date:
    """The date D of the night containing `t_ms` (D 12:00 <= local time < D+1 12:00)."""
    local = dt.datetime.fromtimestamp(t_ms / 1000, tz)
    return local.date() if local.hour >= 12 else local.date() - dt.timedelta(days=1)


def local_ms(day: dt.date, hour: int, minute: int, tz: ZoneInfo) -> int:
    """Epoch ms of the local wall time `day hour:minute` in `tz`.

    A wall time skipped by a spring-forward change (02:30 on the last Sunday of March in Paris)
    maps to the instant it would have been with the old offset (= 03:30 new time); a repeated one
    (02:30 in October) maps to its first occurrence (fold=0).
    """
    local = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
    return int(local.timestamp() * 1000)


def night_bounds(night: dt.date, tz: ZoneInfo) -> tuple[int, int]:
    """(start_ms, end_ms) of the night of `night`: local noon to the next local noon."""
    return local_ms(night, 12, 0, tz), local_ms(night + dt.timedelta(days=1), 12, 0, tz)


@dataclass(frozen=True, slots=True)
class SunNight:
    """Dusk and dawn of one night at one place; `dark` False when the sun never goes low enough."""

    night: dt.date
    start_ms: int
    end_ms: int
    dusk_ms: int | None
    dawn_ms: int | None

    @property
    def dark(self) -> bool:
        """True if the night has a dark period (dusk and dawn exist)."""
        return self.dusk_ms is not None


def _elev(obs: Observer, t_ms: int) -> float:
    when = dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC)
    return float(elevation(obs, when, with_refraction=False))


def _refine(obs: Observer, lo: int, hi: int, threshold: float, falling: bool) -> int:
    """Bisect the crossing of `threshold` in (lo, hi]: the first instant on the `hi` side of it."""
    while hi - lo > _PRECISION_MS:
        mid = (lo + hi) // 2
        below = _elev(obs, mid) < threshold
        if below == falling:
            hi = mid
        else:
            lo = mid
    return hi


def _minimum(obs: Observer, lo: int, hi: int) -> int:
    """The instant of the lowest elevation in [lo, hi] (golden-section search, to ~1 s)."""
    g = 0.6180339887498949
    a, b = lo, hi
    c, d = int(b - g * (b - a)), int(a + g * (b - a))
    fc, fd = _elev(obs, c), _elev(obs, d)
    while b - a > _PRECISION_MS:
        if fc < fd:
            b, d, fd = d, c, fc
            c = int(b - g * (b - a))
            fc = _elev(obs, c)
        else:
            a, c, fc = c, d, fd
            d = int(a + g * (b - a))
            fd = _elev(obs, d)
    return (a + b) // 2


def sun_night(lat: float, lon: float, night: dt.date, tz: ZoneInfo, twilight: Twilight) -> SunNight:
    """Dusk and dawn of the night of `night` at (lat, lon); see the module doc for polar cases."""
    obs = Observer(latitude=lat, longitude=lon)
    start, end = night_bounds(night, tz)
    threshold = -twilight.depression_deg
    times = [*list(range(start, end, _SCAN_MS)), end]
    elev = [_elev(obs, t) for t in times]
    below = [e < threshold for e in elev]
    if not any(below):
        # A dip shorter than the scan step (the first dark nights after the midnight sun) would
        # hide between samples: look for the true minimum around the lowest sample.
        k = min(range(len(elev)), key=elev.__getitem__)
        lo, hi = times[max(k - 1, 0)], times[min(k + 1, len(times) - 1)]
        t_min = _minimum(obs, lo, hi)
        if _elev(obs, t_min) >= threshold:
            return SunNight(night, start, end, None, None)
        dusk = _refine(obs, lo, t_min, threshold, True)
        dawn = _refine(obs, t_min, hi, threshold, False)
        return SunNight(night, start, end, dusk, dawn)
    first = below.index(True)
    last = len(below) - 1 - below[::-1].index(True)
    dusk = start if first == 0 else _refine(obs, times[first - 1], times[first], threshold, True)
    dawn = end if last == len(times) - 1 else _refine(obs, times[last], times[last + 1], threshold, False)
    return SunNight(night, start, end, dusk, dawn)


def cell_of(lat: float, lon: float, cell_deg: float) -> tuple[int, int]:
    """The grid cell of a position; dusk/dawn are computed once per cell (at its centre) and night."""
    return (int(lat // cell_deg), int(lon // cell_deg))


def cell_centre(cell: tuple[int, int], cell_deg: float) -> tuple[float, float]:
    """(lat, lon) of a cell's centre."""
    return ((cell[0] + 0.5) * cell_deg, (cell[1] + 0.5) * cell_deg)
