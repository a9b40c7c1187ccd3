"""Normalise free-text camera motion to VINCIE's labels
{none, orbit, dolly-in, dolly-out, pan-left, pan-right, tilt-up, tilt-down}.

VLMs describe motion in many words ("the camera slowly pushes in", "slight pan to the left",
"static shot"). The label set is small and fixed, so ordered keyword rules are both predictable
and auditable; the original text is always kept beside the label.
"""

from __future__ import annotations

import re
from typing import Literal

# VINCIE's camera labels (seed 003, App. C.2); a session turn carries one.
CameraLabel = Literal["none", "orbit", "dolly-in", "dolly-out", "pan-left", "pan-right", "tilt-up", "tilt-down"]
CAMERA_LABELS: tuple[str, ...] = CameraLabel.__args__  # type: ignore[attr-defined]

# Order matters: the first rule that matches wins (e.g. "orbit left" is an orbit, not a pan).
_RULES: list[tuple[str, str]] = [
    (r"\b(orbit\w*|arc\w*|circl\w*|revolv\w*|rotat\w* around)\b", "orbit"),
    (r"\b(doll\w*|push\w*|mov\w*|track\w*|travel\w*|truck\w*|advanc\w*)[\s-]*(in|into|forward|toward\w*|closer)\b", "dolly-in"),
    (r"\b(zoom\w*)[\s-]*(in)\b|\bcloser\b|\bapproach\w*\b|\bpush[\s-]*in\b", "dolly-in"),
    (r"\b(doll\w*|pull\w*|mov\w*|track\w*|travel\w*|truck\w*)[\s-]*(out|back\w*|away)\b", "dolly-out"),
    (r"\b(zoom\w*)[\s-]*(out)\b|\bfarther\b|\bfurther away\b|\bpull[\s-]*back\b|\bretreat\w*\b", "dolly-out"),
    (r"\b(pan\w*|swing\w*|turn\w*|sweep\w*|mov\w*|shift\w*|truck\w*)\b[\w\s-]{0,20}?\b(left|leftward\w*)\b", "pan-left"),
    (r"\b(pan\w*|swing\w*|turn\w*|sweep\w*|mov\w*|shift\w*|truck\w*)\b[\w\s-]{0,20}?\b(right|rightward\w*)\b", "pan-right"),
    (r"\b(tilt\w*|pitch\w*|crane\w*|pedestal\w*|mov\w*|boom\w*)\b[\w\s-]{0,20}?\b(up|upward\w*)\b", "tilt-up"),
    (r"\b(tilt\w*|pitch\w*|crane\w*|pedestal\w*|mov\w*|boom\w*)\b[\w\s-]{0,20}?\b(down|downward\w*)\b", "tilt-down"),
]


def normalize_camera(text: str | None) -> CameraLabel:
    """The label for a free-text camera change; `none` when it names no motion we know."""
    if not text:
        return "none"
    lowered = text.lower().replace("_", " ")
    for pattern, label in _RULES:
        if re.search(pattern, lowered):
            return label  # type: ignore[return-value]
    # Exact label spellings ("pan-left", "tilt up") and anything unrecognised.
    compact = re.sub(r"[\s_]+", "-", lowered.strip())
    for label in CameraLabel.__args__:  # type: ignore[attr-defined]
        if compact == label:
            return label
    return "none"
