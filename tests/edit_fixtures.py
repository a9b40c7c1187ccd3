"""A small edit dataset in the generic adapter's layout, built from the repo's real example media
(scikit-image photos, the Intel car clip) with real pixel edits, and a scripted judge for it.

Each edit's instruction is unique, so the scripted OpenAI-compatible server can tell from a prompt
which sample it is about and answer as a real judge would for that edit (the PQ prompt carries no
instruction: it gets full marks for every image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from curation.media.edit_media import encode_h264

from conftest import EXAMPLES

CLIP_FRAMES = 30  # frames of each test clip (the shard cap in tests is set below this)
CLIP_SIZE = (384, 216)


@dataclass
class Edit:
    name: str
    kind: str  # pair | triplet
    instruction: str
    category_raw: str
    sc: tuple[float, float]  # EditScore semantic consistency the judge gives, 0-25
    box: tuple[int, int, int, int] | None = None  # the edited object (or kept foreground) in target pixels
    reference_score: float = 8.0
    size: tuple[int, int] = (0, 0)  # target width, height
    files: dict[str, str] = field(default_factory=dict)

    @property
    def edit_score(self) -> float:
        """What EditScore's formula gives for this judge answer (PQ is 25, 25 -> 10)."""
        return float(np.sqrt(min(self.sc) / 2.5 * 10))


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _car_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(EXAMPLES / "intel-sample-videos" / "car-detection.mp4"))
    frames = []
    while len(frames) < CLIP_FRAMES:
        ok, frame = cap.read()
        assert ok
        frames.append(cv2.cvtColor(cv2.resize(frame, CLIP_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def build_edit_dataset(root: Path) -> list[Edit]:
    """Write sources, targets and `edits.jsonl` under `root`; returns the edits with what the judge says."""
    edits: list[Edit] = []
    cat, cup, rocket = (_rgb(EXAMPLES / "skimage" / n) for n in ("chelsea.png", "coffee.png", "rocket.jpg"))

    # A red ball painted onto the cat photo: a local addition the grounding VLM boxes.
    ball = cat.copy()
    cv2.circle(ball, (100, 150), 40, (220, 30, 30), -1)
    edits.append(Edit("ball", "pair", "Add a red ball to the left of the cat.", "add", (22.5, 22.5), (60, 110, 141, 191)))
    _save(root / "images" / "ball_src.png", cat)
    _save(root / "images" / "ball_tgt.png", ball)

    # The cup recoloured (hue shift inside its region): a local change.
    blue = cup.copy()
    hsv = cv2.cvtColor(blue[100:330, 180:430], cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 90) % 180
    blue[100:330, 180:430] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    edits.append(Edit("cup", "pair", "Make the coffee cup blue.", "replace", (25.0, 21.0), (180, 100, 430, 330)))
    _save(root / "images" / "cup_src.jpg", cup)
    _save(root / "images" / "cup_tgt.jpg", blue)

    # Everything but the cat replaced by a gradient: a background change (the cat is the foreground).
    gradient = np.zeros_like(cat)
    gradient[..., 2] = np.linspace(40, 220, cat.shape[1], dtype=np.uint8)[None, :]
    gradient[..., 1] = 90
    backdrop = gradient.copy()
    backdrop[30:300, 120:380] = cat[30:300, 120:380]
    edits.append(Edit("backdrop", "pair", "Replace the background with a blue gradient.", "Background Change",
                      (22.5, 25.0), (120, 30, 380, 300), reference_score=6.0))
    _save(root / "images" / "backdrop_tgt.png", backdrop)

    # A sepia rocket: a global style edit (outside the references pipeline's categories).
    sepia = cv2.transform(rocket.astype(np.float32), np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168],
                                                               [0.272, 0.534, 0.131]], np.float32))
    edits.append(Edit("sepia", "pair", "Give the photo a sepia look.", "style", (25.0, 25.0)))
    _save(root / "images" / "sepia_tgt.jpg", np.clip(sepia, 0, 255).astype(np.uint8))

    # A failed edit: the target is the source, and the judge says so.
    edits.append(Edit("unchanged", "pair", "Put a hat on the cat.", "add", (2.5, 25.0), (150, 20, 300, 90)))

    # Video triplets from the car clip: a region tinted red in every frame (local change), and a
    # brightness change under a category name no adapter knows.
    frames = _car_frames()
    tinted = [f.copy() for f in frames]
    for f in tinted:
        f[60:150, 100:220, 0] = 230
    bright = [np.clip(f.astype(int) + 60, 0, 255).astype(np.uint8) for f in frames]
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for name, clip in (("car_src", frames), ("car_red", tinted), ("car_bright", bright)):
        (root / "videos" / f"{name}.mp4").write_bytes(encode_h264(clip, 12.5))
    edits.append(Edit("car_red", "triplet", "Paint the parked car red.", "local change", (22.5, 22.5), (100, 60, 220, 150)))
    edits.append(Edit("car_bright", "triplet", "Make the scene brighter.", "mystery tweak", (20.0, 20.0)))

    files = {
        "ball": ("images/ball_src.png", "images/ball_tgt.png"),
        "cup": ("images/cup_src.jpg", "images/cup_tgt.jpg"),
        "backdrop": ("images/ball_src.png", "images/backdrop_tgt.png"),
        "sepia": (str(EXAMPLES / "skimage" / "rocket.jpg"), "images/sepia_tgt.jpg"),
        "unchanged": ("images/ball_src.png", "images/ball_src.png"),
        "car_red": ("videos/car_src.mp4", "videos/car_red.mp4"),
        "car_bright": ("videos/car_src.mp4", "videos/car_bright.mp4"),
    }
    with open(root / "edits.jsonl", "w") as out:
        for edit in edits:
            source, target = files[edit.name]
            edit.files = {"source": source, "target": target}
            edit.size = CLIP_SIZE if edit.kind == "triplet" else cv2.imread(str(root / target if not target.startswith("/")
                                                                                  else target)).shape[1::-1]
            out.write(json.dumps({"source": source, "target": target, "instruction": edit.instruction,
                                  "category": edit.category_raw}) + "\n")
    return edits


def judge_answer(edits: list[Edit]):
    """The scripted judge: reads which template and which edit a prompt is about, answers for it."""
    by_instruction = {e.instruction: e for e in edits}

    def answer(prompt: str) -> dict:
        edit = next((e for text, e in by_instruction.items() if text in prompt), None)
        if "Naturalness" in prompt:  # EditScore perceptual quality: no instruction in the prompt
            return {"reasoning": "Looks natural.", "score": [25, 25]}
        assert edit is not None, f"prompt names no known edit: {prompt[:200]}"
        if "Editing success" in prompt:
            return {"reasoning": f"Judged {edit.name}.", "score": list(edit.sc)}
        if "You locate" in prompt:
            w, h = edit.size
            x0, y0, x1, y1 = edit.box
            box = [round(x0 / w * 1000), round(y0 / h * 1000), round(x1 / w * 1000), round(y1 / h * 1000)]
            if "main subject" in prompt:  # foreground grounding: the kept subject in both images
                return {"objects": [{"label": "cat", "bbox_2d": box, "image": "source"},
                                    {"label": "cat", "bbox_2d": box, "image": "edited"}]}
            return {"objects": [{"label": edit.name.replace("_", " "), "bbox_2d": box}]}
        if "reference image" in prompt:
            return {"reasoning": "Reference checked.", "score": edit.reference_score}
        raise AssertionError(f"unexpected prompt: {prompt[:200]}")

    return answer
