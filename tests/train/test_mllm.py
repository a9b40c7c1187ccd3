"""The MLLM conditioner on a tiny random Qwen2.5-VL saved with `save_pretrained` and loaded by path,
through the same code as `Qwen/Qwen2.5-VL-3B-Instruct`: output shapes per query group, what trains
and gets gradients, the frames and references the MLLM sees, the trained state's round trip, and
`curate train encoder=mllm` on hand-written shards of real frames, resumed exactly."""

from __future__ import annotations

import io
import json
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from curation.train.config import compose_train
from curation.train.loop import Distributed, Trainer, train
from curation.train.mllm import MLLMConditioner, MLLMConfig, even_frames

from tests.fixtures.training import same_checkpoints, save_qwen_vl, session_frames, write_tar

CPU = torch.device("cpu")
QUERIES = {"image": 4, "video": 6, "reference": 8}


@pytest.fixture(scope="module")
def qwen_vl(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen-vl")
    save_qwen_vl(path)
    return path


def conditioner(path, **overrides) -> MLLMConditioner:
    options = dict(model=str(path), out_dim=24, queries=QUERIES, lora_rank=4, max_pixels=56 * 56)
    options.update(overrides)
    return MLLMConditioner(MLLMConfig(**options), CPU)


def pixels(n: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, frames, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_each_group_has_its_own_query_count(qwen_vl):
    mllm = conditioner(qwen_vl)
    texts = ["make the cup blue", "add a ball"]
    for group, source, reference in (("image", pixels(2, 1), pixels(2, 0)), ("video", pixels(2, 9), pixels(2, 0)),
                                     ("reference", pixels(2, 1), pixels(2, 1))):
        context, mask = mllm(texts, source, reference, group)
        assert context.shape == (2, QUERIES[group], 24) and mask.shape == (2, QUERIES[group])
        assert mask.dtype == torch.bool and mask.all()
    assert mllm.dim == 24


def test_only_queries_connector_and_lora_train_and_they_get_gradients(qwen_vl):
    mllm = conditioner(qwen_vl)
    trained = {name for name, p in mllm.named_parameters() if p.requires_grad}
    assert trained == {name for name, _ in mllm.named_parameters()
                       if name.startswith(("queries.", "connector.")) or ".lora_" in name}
    assert any(".lora_" in name for name in trained) and all("visual" not in name for name in trained)
    context, _ = mllm(["make the cup blue"], pixels(1, 9), pixels(1, 0), "video")
    context.square().mean().backward()
    grads = {name: p.grad for name, p in mllm.named_parameters()}
    assert all(grads[name] is None for name, p in mllm.named_parameters() if not p.requires_grad)
    assert grads["queries.video"].abs().sum() > 0 and grads["queries.image"] is None  # only the batch's group
    assert all(grads[name].abs().sum() > 0 for name in trained if name.startswith("connector."))
    # B starts at zero, so only B sees a gradient on the first step (A's is B^T times it)
    assert all(grads[name] is not None for name in trained if ".lora_" in name)
    assert all(grads[name].abs().sum() > 0 for name in trained if ".lora_B" in name)


def test_a_video_source_shows_video_frames_evenly_spaced(qwen_vl):
    assert even_frames(17, 13)[0] == 0 and even_frames(17, 13)[-1] == 16 and len(even_frames(17, 13)) == 13
    assert even_frames(3, 5) == [0, 0, 1, 2, 2]  # a shorter clip repeats frames
    for frames in (13, 5):
        mllm = conditioner(qwen_vl, video_frames=frames, lora_rank=0)
        inputs = mllm._inputs(["add a ball"], pixels(1, 17), pixels(1, 0))
        # temporal patches of 2 frames (an odd count is padded by one)
        assert inputs["video_grid_thw"][:, 0].tolist() == [(frames + 1) // 2] and "image_grid_thw" not in inputs


def test_references_are_shown_after_the_source(qwen_vl):
    mllm = conditioner(qwen_vl, lora_rank=0)
    source = pixels(2, 1)
    assert len(mllm._inputs(["a", "b"], source, pixels(2, 0))["image_grid_thw"]) == 2
    assert len(mllm._inputs(["a", "b"], source, pixels(2, 1))["image_grid_thw"]) == 4
    assert len(mllm._inputs(["a", "b"], pixels(2, 9), pixels(2, 1))["image_grid_thw"]) == 2  # video + one image each
    with torch.no_grad():
        one, _ = mllm(["a", "b"], source, pixels(2, 1, seed=1), "reference")
        other, _ = mllm(["a", "b"], source, pixels(2, 1, seed=2), "reference")
    assert not torch.allclose(one, other)


def _reduce_on_rank(rank: int, path, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2)
    torch.manual_seed(0)
    mllm = conditioner(path)
    group = ("image", "reference")[rank]
    mllm(["add a ball"], pixels(1, 1, seed=rank), pixels(1, rank), group)[0].square().mean().backward()
    local = {name: p.grad.clone() for name, p in mllm.named_parameters() if p.grad is not None}
    mllm.all_reduce_grads()
    reduced = {name: p.grad for name, p in mllm.named_parameters() if p.grad is not None}
    torch.save({"local": local, "reduced": reduced}, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and transformers
def test_two_ranks_average_the_trained_gradients(qwen_vl, tmp_path):
    """Ranks on different groups: shared parts average, a query set one rank used gets half its
    gradient, and a set neither used keeps none (DDP's rule for globally unused parameters)."""
    torch.multiprocessing.spawn(_reduce_on_rank, args=(qwen_vl, tmp_path), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["reduced"].keys() == b["reduced"].keys() and "queries.video" not in a["reduced"]
    for name, grad in a["reduced"].items():
        torch.testing.assert_close(grad, b["reduced"][name])
        expected = sum(side["local"][name] for side in (a, b) if name in side["local"]) / 2
        torch.testing.assert_close(grad, expected)
    assert "queries.image" in a["local"] and "queries.image" not in b["local"]


def test_the_trained_state_round_trips_and_holds_nothing_else(qwen_vl):
    torch.manual_seed(1)
    first = conditioner(qwen_vl)
    with torch.no_grad():
        for p in first.parameters():
            if p.requires_grad:
                p.add_(0.1)  # LoRA B away from zero, so LoRA changes the output
    state = first.trainable_state_dict()
    assert set(state) == {name for name, p in first.named_parameters() if p.requires_grad}
    torch.manual_seed(2)
    second = conditioner(qwen_vl)
    second.load_trainable_state_dict(state)
    args = (["make the cat red"], pixels(1, 1), pixels(1, 1), "reference")
    with torch.no_grad():
        torch.testing.assert_close(first(*args)[0], second(*args)[0])
    with pytest.raises(ValueError, match="missing"):
        conditioner(qwen_vl, lora_rank=0).load_trainable_state_dict(state)


def test_lora_without_peft_names_the_extra(qwen_vl, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'curation\[mllm\]'"):
        conditioner(qwen_vl)
    assert not any(".lora_" in name for name, _ in conditioner(qwen_vl, lora_rank=0).named_parameters())


def test_the_group_file_carries_the_papers_numbers(tmp_path):
    mllm = compose_train([f"shards={tmp_path}", "encoder=mllm"]).encoder
    assert mllm.conditioner == "mllm" and mllm.mllm.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert mllm.mllm.queries.model_dump() == {"image": 256, "video": 512, "reference": 768} and mllm.mllm.video_frames == 13
    assert compose_train([f"shards={tmp_path}"]).encoder.conditioner == "text"


# ---- training --------------------------------------------------------------------------------

def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG")
    return buf.getvalue()


def _mp4(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "veryfast"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return buf.getvalue()


@pytest.fixture(scope="module")
def edit_shards(tmp_path_factory):
    """Pairs, quads and triplets cut from three real video frames (64x48 windows; a clip's window moves)."""
    frames = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in session_frames(3)]
    window = lambda frame, dx: frame[100:148, 100 + dx:164 + dx]  # noqa: E731
    samples = []
    for i in range(4):
        source, target = window(frames[i % 3], 4 * i), window(frames[(i + 1) % 3], 4 * i)
        text = f"make the scene brighter {i}"
        samples.append({"__key__": f"pair{i}", "json": json.dumps({"kind": "pair"}), "txt": text,
                        "src.jpg": _png(source), "tgt.jpg": _png(target)})
        samples.append({"__key__": f"quad{i}", "json": json.dumps({"kind": "quad"}), "txt": text,
                        "src.jpg": _png(source), "tgt.jpg": _png(target), "ref.png": _png(target[8:40, 8:40])})
        clip = [window(frames[(i + k) % 3], 2 * k) for k in range(9)]
        samples.append({"__key__": f"clip{i}", "json": json.dumps({"kind": "triplet"}), "txt": text,
                        "src.mp4": _mp4(clip), "tgt.mp4": _mp4(clip[::-1])})
    root = tmp_path_factory.mktemp("mllm-shards")
    write_tar(root / "train-000000.tar", samples)
    return root


def mllm_run(shards, qwen_vl, output, *extra: str) -> list[str]:
    return [f"shards={shards}", "model=tiny", f"output={output}", "progress=false", "device=cpu", "data.resolution=32",
            "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=8", "model.patch_size=[1,4,4]",
            "log_every=1", "checkpoint_every=1000", "optim.warmup_steps=2", "encoder=mllm",
            f"encoder.mllm.model={qwen_vl}", "encoder.mllm.out_dim=24", "encoder.mllm.lora_rank=4",
            "encoder.mllm.video_frames=5", "encoder.mllm.max_pixels=3136",
            *(f"encoder.mllm.queries.{g}={n}" for g, n in QUERIES.items()), *extra]


def test_train_with_the_mllm_conditioner_resumes_exactly(edit_shards, qwen_vl, tmp_path):
    """2k steps straight, and k + resume + k: the same DiT, EMA, conditioner weights and example order."""
    k, common = 3, ("preview_every=3", "preview_count=1", "flow.sample_steps=2")
    straight = train(compose_train(mllm_run(edit_shards, qwen_vl, tmp_path / "straight", f"steps={2 * k}", *common)),
                     keep_records=True)
    first = train(compose_train(mllm_run(edit_shards, qwen_vl, tmp_path / "resumed", f"steps={k}", *common)), keep_records=True)
    second = train(compose_train(mllm_run(edit_shards, qwen_vl, tmp_path / "resumed", f"steps={2 * k}", *common)),
                   keep_records=True)
    assert [r.keys for r in straight] == [r.keys for r in first + second] and all(r.loss == r.loss for r in straight)
    groups = {json.loads(line)["group"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()}
    assert groups == {"image", "video", "reference"}  # every query set trained
    a, _ = same_checkpoints(tmp_path / "straight", tmp_path / "resumed", parts=("model", "conditioner"))
    assert a["step"] == 2 * k
    assert all(name.startswith(("queries.", "connector.")) or ".lora_" in name for name in a["conditioner"])
    assert a["model"]["text_embed.proj.0.weight"].shape[1] == 24  # the DiT reads the connector's width
    assert (tmp_path / "resumed" / "previews" / "step_0000006.png").is_file()
    # the connector moved from its initial weights: the conditioner trained
    fresh = MLLMConditioner(compose_train(mllm_run(edit_shards, qwen_vl, tmp_path / "x")).encoder.mllm, CPU)
    assert not torch.equal(fresh.trainable_state_dict()["connector.2.weight"], a["conditioner"]["connector.2.weight"])
    # a text-encoder run cannot resume an MLLM checkpoint
    with pytest.raises(ValueError, match=r"encoder\.conditioner=mllm"):
        Trainer(compose_train(mllm_run(edit_shards, qwen_vl, tmp_path / "r", "encoder.conditioner=text")),
                Distributed()).load_state_dict(a)


def test_session_sequences_ask_for_a_text_encoder(edit_shards, qwen_vl, tmp_path):
    trainer = Trainer(compose_train(mllm_run(edit_shards, qwen_vl, tmp_path / "run", "steps=1")), Distributed())
    with pytest.raises(ValueError, match=r"session sequences need a text encoder \(encoder.conditioner=text\)"):
        trainer.train_step([{"layout": "session"}])
