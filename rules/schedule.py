"""A profile resolved for one night and place: a piecewise-linear level over time."""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from rules.astro import SunNight, local_ms
from rules.model import Profile


@dataclass(frozen=True, slots=True)
class Timeline:
    """The scheduled level of one profile over one night (start_ms .. end_ms), before class minimum.

    `times`/`levels` are breakpoints of a piecewise-linear function (a switch is two breakpoints
    at the same instant); before the first breakpoint the level is `levels[0]`, after the last
    `levels[-1]`. `steps` lists (instant, index in profile.steps) of the steps that apply this
    night, in time order (skipped ones are absent).
    """

    profile_id: str
    why: str
    start_ms: int
    end_ms: int
    times: tuple[int, ...]
    levels: tuple[float, ...]
    steps: tuple[tuple[int, int], ...]
    dark_from_ms: int | None
    dark_to_ms: int | None

    def level_at(self, t_ms: int) -> float:
        """The scheduled level at `t_ms`."""
        ts = self.times
        i = bisect.bisect_right(ts, t_ms)
        if i == 0:
            return self.levels[0]
        if i == len(ts):
            return self.levels[-1]
        t0, t1 = ts[i - 1], ts[i]
        l0, l1 = self.levels[i - 1], self.levels[i]
        if l0 == l1:
            return l0
        return l0 + (l1 - l0) * (t_ms - t0) / (t1 - t0)

    def step_at(self, t_ms: int) -> int | None:
        """Index (in the profile) of the step in force at `t_ms`, None before the first one."""
        i = bisect.bisect_right([t for t, _ in self.steps], t_ms)
        return None if i == 0 else self.steps[i - 1][1]

    def is_dark(self, t_ms: int) -> bool:
        """True between dusk and dawn (the sun below the twilight threshold)."""
        return self.dark_from_ms is not None and self.dark_from_ms <= t_ms < (self.dark_to_ms or 0)


def resolve_steps(profile: Profile, sun: SunNight, tz: ZoneInfo) -> list[tuple[int, int]]:
    """(instant, step index) of the profile's steps that apply on this night, in time order.

    If the profile has dusk/dawn steps and the night has no dark period (midnight sun), no step
    applies (the lamps stay at the day level). Otherwise each step happens at its own time, but
    never before a step listed before it: a clock step overtaken by an earlier-listed dusk step
    (e.g. "20:00 40%" after a 22:00 summer dusk) takes effect at that dusk, replacing the dusk
    step's level. A clock step that falls at or after a dusk/dawn step listed after it is skipped
    (e.g. "05:30 70%" after a 05:13 dawn+10 in June: the lamps do not come back on). Among steps
    due at the same instant the last listed wins.
    """
    anchored = [i for i, s in enumerate(profile.steps) if s.anchor != "clock"]
    if anchored and not sun.dark:
        return []
    when: list[int] = []
    for s in profile.steps:
        if s.anchor == "dusk":
            assert sun.dusk_ms is not None
            when.append(sun.dusk_ms + s.offset_min * 60_000)
        elif s.anchor == "dawn":
            assert sun.dawn_ms is not None
            when.append(sun.dawn_ms + s.offset_min * 60_000)
        else:
            h, m = int(s.at[:2]), int(s.at[3:])
            day = sun.night if h >= 12 else sun.night + dt.timedelta(days=1)
            when.append(local_ms(day, h, m, tz))
    out: list[tuple[int, int]] = []
    for i, s in enumerate(profile.steps):
        # a step due before the night starts (dusk-10 in a polar night, whose dusk is noon) is in
        # force from the start
        t = max(when[i], sun.start_ms)
        if s.anchor == "clock" and any(when[j] <= when[i] for j in anchored if j > i):
            continue
        if out and t <= out[-1][0]:
            t = out[-1][0]
            out.pop()  # overtaken: this later-listed step replaces it at the same instant
        out.append((t, i))
    return out


def build_timeline(profile: Profile, why: str, sun: SunNight, tz: ZoneInfo) -> Timeline:
    """Resolve a profile for one night into a Timeline (ramps included)."""
    steps = resolve_steps(profile, sun, tz)
    day = profile.day_level
    times: list[int] = [sun.start_ms]
    levels: list[float] = [day]
    ramp_ms = 0  # ramp of the previous applying step, used at the next switch
    for k, (t, i) in enumerate(steps):
        target = profile.steps[i].level
        current = levels[-1]
        if ramp_ms > 0 and current != target:
            end_ramp = t + ramp_ms
            nxt = steps[k + 1][0] if k + 1 < len(steps) else None
            times.append(t)
            levels.append(current)
            if nxt is not None and end_ramp > nxt:
                # the next step comes before the ramp ends: stop where the ramp is at that instant
                times.append(nxt)
                levels.append(current + (target - current) * (nxt - t) / ramp_ms)
            else:
                times.append(end_ramp)
                levels.append(target)
        else:
            times.append(t)
            levels.append(current)
            times.append(t)
            levels.append(target)
        ramp_ms = int(profile.steps[i].ramp_min * 60_000)
    return Timeline(
        profile_id=profile.id,
        why=why,
        start_ms=sun.start_ms,
        end_ms=sun.end_ms,
        times=tuple(times),
        levels=tuple(levels),
        steps=tuple(steps),
        dark_from_ms=sun.dusk_ms,
        dark_to_ms=sun.dawn_ms,
    )
