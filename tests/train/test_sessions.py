"""VINCIE session sequences (seed 003 §3.2-3.3, §4.1, D.4) without I/O: the planner's targets and
context per task, context dropout at the paper's rates, cuts at turn boundaries, and the model's
attention rule (a target sees only the clean items placed before it) checked on outputs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from curation.train import flow
from curation.train.data_config import SessionConfig
from curation.train.model import build_model
from curation.train.sequence_model import segment_mask
from curation.train.sessions import IMAGE, MASK, TASKS, TurnData, camera_prompt, collate_sessions, plan_sequences

H = W = 16


def frame(value: int) -> np.ndarray:
    return np.full((1, H, W, 3), value, np.uint8)


FRAMES = [frame(10 * k) for k in range(5)]  # frame k is filled with 10k: a target's pixels say which frame it is


def turns(found=(True, True, True, True), cameras=("none", "pan-left", "dolly-in", "orbit")) -> list[TurnData]:
    return [TurnData(f"edit {k}", cameras[k], "found" if found[k] else "none",
                     frame(100 + k) if found[k] else None, frame(200 + k) if found[k] else None) for k in range(4)]


def config(**overrides) -> SessionConfig:
    base = dict(roe_probability=1.0, drop_current_frame=0.0, drop_current_roe=0.0, drop_next_roe=0.0, max_tokens=10_000)
    return SessionConfig(**{**base, **overrides})


def only(task: str) -> dict:
    return {"tasks": {name: float(name == task) for name in TASKS}}


def plan(cfg: SessionConfig, turn_data=None, seed: int = 0):
    return plan_sequences("sess", FRAMES, turn_data or turns(), cfg, tokens_per_frame=1, rng=random.Random(seed))


@pytest.mark.parametrize("task, expected", [("nip", lambda k: 10 * (k + 1)), ("csp", lambda k: 100 + k),
                                            ("nsp", lambda k: 200 + k)])
def test_each_task_targets_its_image_and_sees_exactly_the_turns_before(task, expected):
    """NIP's target is frame k+1, CSP's turn k's source mask, NSP's turn k's target mask; before the
    target of turn k come exactly turns 0..k's frames and instructions (nothing of a later turn)."""
    (sequence,) = plan(config(**only(task)))
    targets = sequence.targets()
    assert [t.turn for t in targets] == [0, 1, 2, 3] and {TASKS[t.task] for t in targets} == {task}
    for k, target in enumerate(targets):
        assert int(target.pixels[0, 0, 0, 0]) == expected(k)
        assert target.kind == (IMAGE if task == "nip" else MASK)
        before = [s for s in sequence.segments if s.order < target.order and not s.noisy]
        assert sorted({s.turn for s in before}) == list(range(k + 1))
        assert [int(s.pixels[0, 0, 0, 0]) for s in before if s.kind == IMAGE] == [10 * j for j in range(k + 1)]
        texts = [t for t in sequence.texts if t.order < target.order and t.instruction]
        assert [(t.text, t.camera) for t in texts] == [(f"edit {j}", turns()[j].camera) for j in range(k + 1)]


def test_a_turn_without_a_found_roe_is_never_a_segmentation_target_and_shows_no_maps():
    data = turns(found=(True, False, True, False))
    for seed in range(20):
        for sequence in plan(config(tasks={"nip": 0.0, "csp": 1.0, "nsp": 1.0}), data, seed):
            for segment in sequence.segments:
                if segment.turn in (1, 3):
                    assert segment.kind == IMAGE and segment.task in (-1, 0)


def test_maps_enter_a_session_at_the_roe_probability_and_context_drops_at_the_paper_rates():
    """§4.1 over 2,000 sessions: RoE maps in 80% of sessions; per NIP turn the current frame leaves
    the context 20% of the time, and each map (where shown) 70%; each rate within ±3%."""
    cfg = SessionConfig(tasks={"nip": 1.0, "csp": 0.0, "nsp": 0.0})  # the defaults: 0.8, 0.2, 0.7, 0.7
    with_maps = frames_dropped = maps_kept = maps_possible = turns_seen = 0
    for seed in range(2000):
        (sequence,) = plan(cfg, seed=seed)
        masks = [s for s in sequence.segments if s.kind == MASK]
        current = [s for s in sequence.segments if s.kind == IMAGE and not s.noisy]
        turns_seen += 4
        frames_dropped += 4 - len(current)
        rng = random.Random(seed)
        if rng.random() < 0.8:  # the planner's first draw decides the maps
            with_maps += 1
            maps_possible += 8
            maps_kept += len(masks)
        else:
            assert not masks
    assert abs(with_maps / 2000 - 0.8) < 0.03
    assert abs(frames_dropped / turns_seen - 0.2) < 0.03
    assert abs(1 - maps_kept / maps_possible - 0.7) < 0.03


def test_segmentation_targets_keep_the_current_frame():
    cfg = config(drop_current_frame=1.0, **only("csp"))
    (sequence,) = plan(cfg)
    for target in sequence.targets():
        assert any(s.kind == IMAGE and s.turn == target.turn and not s.noisy and s.order < target.order
                   for s in sequence.segments)


def test_long_sessions_are_cut_at_turn_boundaries_and_unannotated_turns_break_the_run():
    data = turns()
    data[2] = TurnData(None, "none", "unannotated")
    cfg = config(max_tokens=4, roe_probability=0.0, **only("nip"))  # 1 token a frame; a NIP turn without maps is 2 frames
    sequences = plan(cfg, data)
    assert [s.key for s in sequences] == ["sess#s0", "sess#s3"]
    assert [[t.turn for t in s.targets()] for s in sequences] == [[0, 1], [3]]
    over = plan(config(max_tokens=2, **only("nip")))  # a turn with both maps is 4 frames: over budget, whole anyway
    assert [[t.turn for t in s.targets()] for s in over] == [[0], [1], [2], [3]]
    assert all(len(s.segments) == 4 for s in over)


def test_camera_prefix_is_the_papers_form():
    assert camera_prompt("pan-left", "Add a cat.") == "[###CAMERA: pan-left###] Add a cat."
    assert camera_prompt("none", "Add a cat.") == camera_prompt(None, "Add a cat.") == "[###CAMERA: None###] Add a cat."


def test_segment_mask_lets_targets_see_only_earlier_clean_segments():
    # segments in order: clean I0 (0), noisy I1 (1), clean I1 (2), noisy M (3), padding
    order = torch.tensor([[0, 2, 3, 5, 0]])
    noisy = torch.tensor([[False, True, False, True, False]])
    valid = torch.tensor([[True, True, True, True, False]])
    mask = segment_mask(order, noisy, valid)[0]
    assert mask.tolist() == [[True, False, False, False, False],
                             [True, True, False, False, False],
                             [True, False, True, False, False],
                             [True, False, True, True, False],
                             [False, False, False, False, True]]


def _random_model():
    torch.manual_seed(0)
    model = build_model("tiny", patch_size=(1, 8, 8), text_dim=8)
    with torch.no_grad():  # adaLN-Zero starts the output at 0: give every weight a value so outputs depend on inputs
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _session_inputs(sequence, text_seed: int = 0):
    batch = collate_sessions([sequence])
    n_text = sum(len(t) for t in batch["texts"])
    g = torch.Generator().manual_seed(text_seed)
    session = {name: batch[f"segment_{name}"] for name in ("kind", "turn", "order", "task")}
    session.update(valid=batch["valid"], text=torch.randn(n_text, 3, 8, generator=g), text_mask=torch.ones(n_text, 3, dtype=torch.bool),
                   text_owner=torch.zeros(n_text, dtype=torch.long),
                   text_turn=torch.tensor([t["turn"] for t in batch["texts"][0]]),
                   text_order=torch.tensor([t["order"] for t in batch["texts"][0]]),
                   text_instruction=torch.tensor([t["instruction"] for t in batch["texts"][0]]))
    x = batch["frames"].float() / 127.5 - 1
    t = torch.where(session["task"] >= 0, 0.5, 1.0)
    return x, t, session


def test_a_target_output_depends_on_earlier_context_only():
    """Changing a later segment, a target's own clean copy (the next turn's frame) or a later turn's
    text leaves an earlier target's velocity unchanged; changing an earlier frame changes it."""
    model = _random_model()
    (sequence,) = plan(config(**only("nip")))
    x, t, session = _session_inputs(sequence)
    base = model(x, t, session=session)
    first = int((session["task"][0] >= 0).nonzero()[0])  # turn 0's target: noisy frame 1
    later = first + 1  # the clean copy of frame 1, opening turn 1
    for j in (later, later + 3):
        changed = x.clone()
        changed[:, :, j] += 1.0
        out = model(changed, t, session=session)
        assert torch.allclose(out[:, :, first], base[:, :, first], atol=1e-5)
        assert not torch.allclose(out[:, :, j], base[:, :, j], atol=1e-3)
    earlier = x.clone()
    earlier[:, :, 0] += 1.0  # frame 0, the context of turn 0
    assert not torch.allclose(model(earlier, t, session=session)[:, :, first], base[:, :, first], atol=1e-3)
    text = dict(session, text=session["text"].clone())
    later_text = int((session["text_order"] > session["order"][0, first]).nonzero()[0])
    text["text"][later_text] += 1.0
    assert torch.allclose(model(x, t, session=text)[:, :, first], base[:, :, first], atol=1e-5)


def test_session_loss_sums_the_targets_and_reports_each_task():
    """Eq. 1: a session's loss is the sum of its targets' losses (checked against a model that
    predicts zeros, whose loss per target is the mean of (x1 - x0)² over that target)."""
    (sequence,) = plan(config(tasks={"nip": 1.0, "csp": 1.0, "nsp": 1.0}), seed=3)
    x1, _, session = _session_inputs(sequence)

    def zeros(x, t, session, drop_text):
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    losses = flow.session_losses(zeros, x1, session, flow.FlowConfig(), g)
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(0))
    per_segment = (x1 - x0).pow(2).mean(dim=(1, 3, 4))[0]
    noisy = session["task"][0] >= 0
    assert torch.allclose(losses["loss"], per_segment[noisy].sum())
    for i in range(3):
        chosen = noisy & (session["task"][0] == i)
        if chosen.any():
            assert torch.allclose(losses["task_mse"][i], per_segment[chosen].mean())
        else:
            assert torch.isnan(losses["task_mse"][i])
