"""Policy models: precise validation errors (loc), profile ordering, calendar matching, zone inheritance."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError
from rules_city import city_dict, make_city

from rules import CalendarRule, City, PolicySettings, Profile, Step


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple[Any, ...], str]]:
    return [(e["loc"], e["msg"]) for e in exc.value.errors()]


def test_bad_step_fields_name_the_step_and_field() -> None:
    d = city_dict()
    d["profiles"][0]["steps"][2]["level"] = 120
    d["profiles"][1]["steps"][0]["at"] = "sunset"
    d["profiles"][2]["steps"][1]["speed"] = 3
    with pytest.raises(ValidationError) as exc:
        City.model_validate(d)
    errors = _errors(exc)
    assert (("profiles", 0, "steps", 2, "level"), "Input should be less than or equal to 100") in errors
    assert (
        ("profiles", 1, "steps", 0, "at"),
        'Value error, expected "HH:MM" (00:00..23:59), "dusk" or "dawn", got \'sunset\'',
    ) in errors
    assert (("profiles", 2, "steps", 1, "speed"), "Extra inputs are not permitted") in errors


def test_broken_references_are_all_reported_with_their_loc() -> None:
    d = city_dict()
    d["calendars"][0]["rules"][0]["profile"] = "nope"
    d["zones"][4]["parent"] = "d-nowhere"
    d["lamps"][7]["street"] = "d-centre"  # a district, not a street
    d["lamps"][8]["id"] = d["lamps"][7]["id"]
    with pytest.raises(ValidationError) as exc:
        City.model_validate(d)
    assert sorted(_errors(exc)) == sorted(
        [
            (("calendars", 0, "rules", 0, "profile"), "no profile 'nope'"),
            (("zones", 4, "parent"), "no district 'd-nowhere'"),
            (("lamps", 7, "street"), "no street 'd-centre'"),
            (("lamps", 8, "id"), "duplicate id 's-avenue-07'"),
        ]
    )


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [{"at": "23:00", "level": 70}, {"at": "22:00", "level": 50}],
            "steps[1]: clock steps must be in increasing night order",
        ),
        (
            [{"at": "dawn", "level": 0}, {"at": "dusk", "level": 100}],
            "steps[1]: dusk steps must come before dawn steps",
        ),
        (
            [{"at": "dusk", "offset_min": 10, "level": 1}, {"at": "dusk", "level": 2}],
            "steps[1]: dusk offsets must increase",
        ),
        ([{"at": "23:00", "offset_min": 5, "level": 1}], "offset_min applies to dusk/dawn steps only"),
        ([], "List should have at least 1 item"),
    ],
)
def test_profile_order_rules(steps: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Profile.model_validate({"id": "p", "steps": steps})


def test_clock_steps_across_midnight_are_in_night_order() -> None:
    p = Profile(
        id="p",
        steps=[
            Step(at="18:00", level=100),
            Step(at="23:59", level=50),
            Step(at="00:00", level=20),
            Step(at="11:59", level=0),
        ],
    )
    assert [s.night_minute for s in p.steps] == [360, 719, 720, 1439]


@pytest.mark.parametrize(
    ("rule", "night", "match"),
    [
        ({"dates": ["2026-12-24"]}, dt.date(2026, 12, 24), True),
        ({"dates": ["12-24"]}, dt.date(2031, 12, 24), True),
        ({"dates": ["12-24"]}, dt.date(2031, 12, 25), False),
        ({"weekdays": ["fri", "sat"]}, dt.date(2026, 11, 20), True),  # a Friday
        ({"weekdays": ["fri", "sat"]}, dt.date(2026, 11, 22), False),
        ({"date_from": "2026-07-01", "date_to": "2026-07-31"}, dt.date(2026, 7, 31), True),
        ({"date_from": "2026-07-01", "date_to": "2026-07-31"}, dt.date(2027, 7, 15), False),
        ({"date_from": "12-20", "date_to": "01-05"}, dt.date(2027, 1, 3), True),  # wraps the year end
        ({"date_from": "12-20", "date_to": "01-05"}, dt.date(2027, 1, 6), False),
        ({"date_from": "11-28", "date_to": "12-24", "weekdays": ["fri"]}, dt.date(2026, 12, 4), True),
        ({"date_from": "11-28", "date_to": "12-24", "weekdays": ["fri"]}, dt.date(2026, 12, 5), False),
        ({"dates": ["02-29"]}, dt.date(2028, 2, 29), True),
    ],
)
def test_calendar_rule_matching(rule: dict[str, Any], night: dt.date, match: bool) -> None:
    assert CalendarRule.model_validate({"profile": "p", **rule}).matches(night) is match


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({}, "a rule needs dates, weekdays or a date range"),
        ({"date_from": "12-01"}, "date_from and date_to go together"),
        ({"date_from": "2026-12-01", "date_to": "12-24"}, "both be YYYY-MM-DD or both MM-DD"),
        ({"date_from": "2026-12-24", "date_to": "2026-12-01"}, "date_from is after date_to"),
        ({"dates": ["13-01"]}, "invalid annual date '13-01'"),
        ({"weekdays": ["funday"]}, "Input should be 'mon'"),
    ],
)
def test_calendar_rule_errors(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CalendarRule.model_validate({"profile": "p", **rule})


def test_first_matching_calendar_rule_wins() -> None:
    cal = (
        make_city()
        .calendar_by_id["std"]
        .model_copy(
            update={
                "rules": [
                    CalendarRule(profile="a", weekdays=["fri"]),
                    CalendarRule(profile="b", dates=["12-04"]),
                ]
            }
        )
    )
    assert cal.profile_for(dt.date(2026, 12, 4))[0] == "a"
    assert cal.profile_for(dt.date(2027, 12, 4)) == ("b", "calendar std rule 1")
    assert cal.profile_for(dt.date(2027, 12, 5)) == ("std", "calendar std default")


def test_zone_settings_are_inherited_from_the_nearest_ancestor() -> None:
    city = make_city()
    assert city.calendar_of("s-lane") == "north"  # from its district
    assert city.calendar_of("s-avenue") == "std"  # the city default
    assert city.presence_rule_of("s-lane") == "walk" and city.presence_rule_of("s-avenue") is None
    assert city.ancestors("s-path") == ["s-path", "d-north", "m-dijon"]


def test_street_shape_rules() -> None:
    d = city_dict()
    d["zones"][3].pop("lighting_class")
    d["zones"][0]["lighting_class"] = "M1"
    with pytest.raises(ValidationError) as exc:
        City.model_validate(d)
    msgs = dict(_errors(exc))
    assert "a street needs a lighting_class" in msgs[("zones", 3)]
    assert "only a street has a lighting_class" in msgs[("zones", 0)]


def test_settings_errors_and_partial_class_minimum() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        PolicySettings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match=r"unknown lighting class\(es\) \['M7'\]"):
        PolicySettings.model_validate({"class_minimum": {"M7": 10}})
    s = PolicySettings.model_validate({"class_minimum": {"P6": 0}})
    assert s.class_minimum["P6"] == 0 and s.class_minimum["M1"] == 50


def test_model_copy_with_update_is_validated_and_evaluates_afresh() -> None:
    import datetime as dt

    from rules_city import at

    from rules import explain

    city = make_city()
    t = at(dt.date(2026, 11, 17), 21)
    assert explain(city, "s-avenue-00", t).source == "schedule"
    ov = {
        "id": "o",
        "target": {"kind": "lamp", "id": "s-avenue-00"},
        "level": 0,
        "start_ms": 0,
        "created_ms": 0,
    }
    copy = city.model_copy(update={"overrides": [ov]})
    assert explain(copy, "s-avenue-00", t).source == "override"
    assert explain(city, "s-avenue-00", t).source == "schedule"
    assert explain(copy.model_copy(update={"overrides": []}), "s-avenue-00", t).source == "schedule"
    with pytest.raises(ValidationError, match="no street 'nowhere'"):
        city.model_copy(update={"crises": [{"id": "c", "streets": ["nowhere"], "start_ms": 0}]})


def test_models_publish_a_json_schema_for_the_openapi_document() -> None:
    from rules import Crisis, Override

    prof = Profile.model_json_schema()
    assert prof["additionalProperties"] is False and "steps" in prof["required"]
    step = prof["$defs"]["Step"]["properties"]
    assert step["level"]["maximum"] == 100 and step["level"]["minimum"] == 0
    assert {"target", "level", "start_ms", "created_ms"} <= set(Override.model_json_schema()["required"])
    assert Crisis.model_json_schema()["properties"]["streets"]["minItems"] == 1
