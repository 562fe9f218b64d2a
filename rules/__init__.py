"""The lighting policy (schedules, astronomical clock, presence, arbitration, energy): pure functions.

No I/O, no clock reads: every instant is an argument in epoch milliseconds. See docs/policy.md.
"""

from rules.astro import SunNight, local_ms, night_bounds, night_of, sun_night
from rules.commands import command_level, diff_commands, merge_groups
from rules.energy import EnergyReport, LampEnergy, measured_wh, night_energy, power_w
from rules.evaluate import Decision, Evaluator, Source, apply_event, evaluate_all, explain, next_change
from rules.model import (
    DEFAULT_CLASS_MINIMUM,
    LIGHTING_CLASSES,
    Calendar,
    CalendarRule,
    City,
    Crisis,
    Lamp,
    Override,
    PolicyData,
    PolicySettings,
    PowerModel,
    PresenceRule,
    Profile,
    Step,
    Target,
    Twilight,
    Zone,
)
from rules.plan import Plan, content_version, plan_for
from rules.presence import Hold, PresenceEvent, PresenceState
from rules.schedule import Timeline

__all__ = [
    "DEFAULT_CLASS_MINIMUM",
    "LIGHTING_CLASSES",
    "Calendar",
    "CalendarRule",
    "City",
    "Crisis",
    "Decision",
    "EnergyReport",
    "Evaluator",
    "Hold",
    "Lamp",
    "LampEnergy",
    "Override",
    "Plan",
    "PolicyData",
    "PolicySettings",
    "PowerModel",
    "PresenceEvent",
    "PresenceRule",
    "PresenceState",
    "Profile",
    "Source",
    "Step",
    "SunNight",
    "Target",
    "Timeline",
    "Twilight",
    "Zone",
    "apply_event",
    "command_level",
    "content_version",
    "diff_commands",
    "evaluate_all",
    "explain",
    "local_ms",
    "measured_wh",
    "merge_groups",
    "next_change",
    "night_bounds",
    "night_energy",
    "night_of",
    "plan_for",
    "power_w",
    "sun_night",
]
