"""Small integer codes stored instead of per-sample text."""

from __future__ import annotations

from wire import Quality

# Stable forever: these integers are in the sample table. Append, never renumber.
QUALITY_CODE: dict[str, int] = {
    Quality.GOOD.value: 0,
    Quality.STALE.value: 1,
    Quality.COMM_ERROR.value: 2,
    Quality.DEVICE_ERROR.value: 3,
    Quality.OUT_OF_RANGE.value: 4,
}
QUALITY_NAME: dict[int, str] = {v: k for k, v in QUALITY_CODE.items()}


def quality_name(code: int | None) -> str | None:
    """The wire name of a stored quality code (``None`` stays ``None``)."""
    return None if code is None else QUALITY_NAME.get(code, "unknown")
