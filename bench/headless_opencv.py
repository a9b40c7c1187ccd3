"""Check that moving to headless OpenCV (issue 20, item 9) changed no shot cut and how it moved OCR scores.

    python bench/headless_opencv.py            # measure with the installed packages, compare with the record
    python bench/headless_opencv.py --record   # (re)write bench/headless_opencv_before.json from this venv

What it measures, on every video the repository bundles plus the ones the tests build from them
(tests/fixtures/media.py VIDEOS):

(a) shot cuts (0-based frame numbers) from scene_split's two PySceneDetect detectors, `content` and
    `adaptive`, with the stage's default settings (`curation.media.shots.detect_video_shots`), and
    from PySceneDetect's own pipeline (its OpenCV backend, SceneManager with auto downscale,
    ContentDetector / AdaptiveDetector at the CLI's 0.6 s minimum scene length), which goes through
    cv2 for decoding and resizing as well as scoring;
(b) the text-overlay score per frame (`curation.quality.text_overlay.text_area_ratios`: union area
    of the detected text boxes / frame area), detection only and with recognition, on 8 frames
    spread over each bundled video at filter_quality's working size, and on the bundled photos with
    text (skimage/text.png) and without (skimage/grass.png, skimage/astronaut.png, ...).

bench/headless_opencv_before.json holds (a) and (b) measured with the packages curate used before:
opencv-python 5.1.0.95, scenedetect 0.7.2, rapidocr-onnxruntime 1.4.4 (PP-OCRv4 detector),
onnxruntime 1.30.0, on this machine's CPU, with `--record`. The run without `--record` prints the
same numbers for the installed packages next to the recorded ones: cuts must be equal (the exit
status says whether they are); OCR scores are compared against the tolerance below (the detector
model changed from PP-OCRv4 to rapidocr 3.10's PP-OCRv6 small, so they are not equal).
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures.media: where the bundled and built videos are

BEFORE = Path(__file__).with_name("headless_opencv_before.json")
# How far a frame's text-area fraction may move between the two OCR stacks and still count as the
# same answer. Ours: filter_quality drops above 0.02 of the frame, so a change smaller than that
# threshold cannot move a frame with real text (>= 0.05 here) under it. It holds for true text
# (testvideo.mp4's copyright line moves by <= 0.01); it cannot hold for the detectors' false
# positives, which differ between PP-OCRv4 and PP-OCRv6: those rows print as MOVE, with the
# clip-level decision (mean over the frames > 0.02) before and after. Only the cuts decide the
# exit status: OCR scores are expected to move where the detector model changed.
OCR_TOLERANCE = 0.02
THRESHOLD = 0.02
OCR_FRAMES_PER_VIDEO = 8
IMAGES = ["skimage/text.png", "skimage/grass.png", "skimage/astronaut.png", "skimage/coffee.png", "skimage/chelsea.png",
          "opencv-doc/aloeL.jpg"]
PACKAGES = ["opencv-python", "opencv-python-headless", "scenedetect", "scenedetect-headless", "rapidocr-onnxruntime",
            "rapidocr", "onnxruntime", "nudenet", "av", "numpy"]


def installed() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def geometry(path: str) -> dict:
    from curation.media.probe import probe_video, rotation_steps

    info = probe_video(path, 1 << 30)
    turned = rotation_steps(info.rotation) % 2
    width, height = (info.coded_height, info.coded_width) if turned else (info.coded_width, info.coded_height)
    return dict(width=width, height=height, fps=info.fps, time_base=Fraction(info.time_base))


def curate_cuts(path: str, detector: str) -> list[int]:
    from curation.core.config import build_stage
    from curation.media.shots import detect_video_shots

    stage = build_stage("scene_split", overrides=[f"scene_split.detector={detector}"])
    return [int(c) for c in detect_video_shots(path, stage.make_detector(), **geometry(path)).cuts]


def library_cuts(path: str, detector: str) -> list[int]:
    from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, SceneManager, open_video

    video = open_video(path, backend="opencv")
    min_len = FrameTimecode("0.6s", fps=video.frame_rate).frame_num
    manager = SceneManager()
    manager.add_detector(ContentDetector(min_scene_len=min_len) if detector == "content" else AdaptiveDetector(min_scene_len=min_len))
    manager.detect_scenes(video)
    return [int(c.frame_num) for c in manager.get_cut_list(show_warning=False)]


def ocr_scores() -> dict[str, dict[str, list[float]]]:
    import cv2

    from curation.media.decode import read_frames
    from curation.media.probe import probe_video
    from curation.quality.assess import sample_indices
    from curation.quality.frames import WORK_MAX_LONG_SIDE, WORK_SHORT_SIDE, resize, work_size
    from curation.quality.text_overlay import text_area_ratios

    from tests.fixtures.media import BUNDLED_VIDEOS, image_path, video_path

    inputs: dict[str, list[np.ndarray]] = {}
    for name in BUNDLED_VIDEOS:
        path = str(video_path(name))
        frames = read_frames(path, sample_indices(0, probe_video(path, 1 << 30).num_frames, OCR_FRAMES_PER_VIDEO))
        inputs[name] = frames
    for name in IMAGES:
        bgr = cv2.imread(str(image_path(name)))
        inputs[name] = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)]
    out = {}
    for name, frames in inputs.items():
        h, w = frames[0].shape[:2]
        work = [resize(f, work_size(w, h, WORK_SHORT_SIDE, WORK_MAX_LONG_SIDE)) for f in frames]
        out[name] = {"detect": [round(r, 5) for r in text_area_ratios(work, recognize=False)],
                     "recognize": [round(r, 5) for r in text_area_ratios(work, recognize=True)]}
    return out


def measure() -> dict:
    from tests.fixtures.media import VIDEOS, video_path

    cuts = {}
    for name in VIDEOS:
        path = str(video_path(name))
        cuts[name] = {f"{who}/{det}": fn(path, det) for who, fn in (("curate", curate_cuts), ("scenedetect", library_cuts))
                      for det in ("content", "adaptive")}
    return {"packages": installed(), "cuts": cuts, "ocr": ocr_scores()}


def compare(before: dict, after: dict) -> bool:
    ok = True
    print(f"packages before: {before['packages']}\npackages now:    {after['packages']}\n")
    print("(a) shot cuts (frame numbers)")
    for name, by_det in after["cuts"].items():
        for det, cuts in by_det.items():
            was = before["cuts"].get(name, {}).get(det)
            same = was == cuts
            ok &= same
            print(f"  {'same' if same else 'DIFF'}  {name:45s} {det:22s} before {was}  now {cuts}")
    print(f"\n(b) text area / frame area per frame (tolerance {OCR_TOLERANCE}, decision threshold {THRESHOLD})")
    for name, modes in after["ocr"].items():
        for mode, now in modes.items():
            was = before["ocr"].get(name, {}).get(mode)
            if was is None:
                print(f"  ----  {name:45s} {mode:9s} not recorded; now {now}")
                continue
            diff = float(np.max(np.abs(np.subtract(was, now))))
            decision = ["drop" if np.mean(v) > THRESHOLD else "keep" for v in (was, now)]
            print(f"  {'ok  ' if diff <= OCR_TOLERANCE else 'MOVE'}  {name:45s} {mode:9s} max|diff| {diff:.4f} "
                  f"mean {np.mean(was):.4f} -> {np.mean(now):.4f} ({decision[0]} -> {decision[1]})  before {was}  now {now}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write the measurement to {BEFORE.name} instead of comparing")
    args = parser.parse_args()
    result = measure()
    if args.record:
        result["note"] = ("measured with `python bench/headless_opencv.py --record` before the switch to headless OpenCV "
                          "(packages above), on the CPU of the development machine")
        BEFORE.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0
    if not BEFORE.is_file():
        print(json.dumps(result, indent=1))
        return 0
    ok = compare(json.loads(BEFORE.read_text()), result)
    print("\nshot cuts unchanged" if ok else "\nshot cuts CHANGED (see DIFF above)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
