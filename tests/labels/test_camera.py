"""Camera-change normalisation: free text from a VLM -> VINCIE's eight labels."""

import pytest

from curation.labels.camera import CAMERA_LABELS, normalize_camera


@pytest.mark.parametrize(
    "text, label",
    [
        ("none", "none"),
        ("", "none"),
        (None, "none"),
        ("Static shot, no camera movement", "none"),
        ("The camera stays fixed", "none"),
        ("handheld shake", "none"),
        ("orbit", "orbit"),
        ("The camera arcs around the car to the left", "orbit"),
        ("dolly in", "dolly-in"),
        ("The camera slowly pushes in toward the man", "dolly-in"),
        ("zoom in on the face", "dolly-in"),
        ("camera moving forward", "dolly-in"),
        ("dolly-out", "dolly-out"),
        ("camera pulls back to reveal the room", "dolly-out"),
        ("zooms out", "dolly-out"),
        ("pan left", "pan-left"),
        ("camera turns to the left", "pan-left"),
        ("slight pan to the right", "pan-right"),
        ("PAN_RIGHT", "pan-right"),
        ("camera tilts up to the sky", "tilt-up"),
        ("crane up", "tilt-up"),
        ("tilt down", "tilt-down"),
        ("Tilt-Down", "tilt-down"),
    ],
)
def test_free_text_maps_to_its_label(text, label):
    assert normalize_camera(text) == label


def test_every_label_is_a_fixed_point():
    for label in CAMERA_LABELS:
        assert normalize_camera(label) == label
