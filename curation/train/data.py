"""Streaming training batches from WebDataset shards, with a position a checkpoint can resume from.

The stream a DataLoader worker produces is a pure function of (seed, epoch, its slot): shards are
shuffled per epoch with the seed, split across ranks and workers, read with `webdataset`, passed
through a seeded shuffle buffer, then decoded and resized to aspect buckets. So a position is small:
per stream, the epoch, how many raw samples it has taken from the shuffle buffer, and the keys of
the decoded examples still waiting in unfilled buckets. Resuming replays the raw (undecoded)
stream up to that count, decodes only the waiting examples, and continues exactly where it stopped.

Kinds are mixed per batch by ratio (InstructX 0.6 video / 0.4 image; Kiwi-Edit stage 3
image : video : reference = 2 : 1 : 1): each batch is drawn from one group, so its shapes agree.
Quads form the reference group, or with `data.quads=modality` join their modality's group (their
reference frame keeps them in buckets of their own). Each group fills batches of its own size.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation.train.data_config import GROUPS, KIND_GROUPS, DataConfig, kind_group
from curation.train.examples import Example, ExampleMaker, UnusableSample, sample_kind, seed_of
from curation.train.sessions import SessionExample, collate_sessions

log = logging.getLogger(__name__)


# ---- shard lists and opening ----------------------------------------------------------------

# URL schemes webdataset's own `gopen` opens (curl, gsutil, pipes, the HF hub); any other scheme
# (s3://, gs://, hdfs://, file://) is opened through pyarrow.fs, credentials from the environment.
WDS_SCHEMES = {"http", "https", "sftp", "ftps", "scp", "ais", "htgs", "hf"}


def _pyarrow_uri(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0] not in WDS_SCHEMES


def open_shard(url: str) -> Any:
    """A readable byte stream of one tar."""
    if _pyarrow_uri(url):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(url)
        return fs.open_input_stream(path)
    import webdataset as wds

    return wds.gopen(url)


def list_shards(spec: str) -> list[str]:
    """Shard URLs from a directory (local or a pyarrow URI: every *.tar below it), a tar, a brace
    pattern or a comma-separated list of them."""
    import webdataset as wds

    urls: list[str] = []
    empty: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if "://" not in item and Path(item).is_dir():
            found = sorted(Path(item).rglob("*.tar"))
            urls.extend(str(p) for p in found)
            if not found:
                empty.append(item)
        elif _pyarrow_uri(item) and not item.endswith(".tar") and "{" not in item:
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(item)
            scheme = item.split("://", 1)[0]
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
            urls.extend(sorted(f"{scheme}://{i.path}" for i in infos if i.path.endswith(".tar")))
        else:
            urls.extend(wds.shardlists.expand_urls(item))
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if not urls or missing:
        raise FileNotFoundError(f"no shards at {spec!r}" + (f" (missing: {missing[:3]})" if missing else ""))
    if empty:
        log.warning("skipping %d empty bucket(s) (no .tar under them): %s", len(empty), ", ".join(empty[:3]))
    return urls


def shard_groups(url: str, quads: str = "group") -> set[str]:
    """Groups a shard holds, from the `<shard>.stats.json` our shard stage writes beside it; all
    groups when there is none (the stream then filters sample by sample). Stats count quads without
    their modality, so with quads=modality a shard holding quads may feed both image and video."""
    if not url.endswith(".tar") or not ("://" not in url or _pyarrow_uri(url)):
        return set(GROUPS)
    stats_url = url[: -len(".tar")] + ".stats.json"
    try:
        with open_shard(stats_url) as stream:
            stats = json.loads(stream.read())
    except (FileNotFoundError, OSError, ValueError):
        return set(GROUPS)
    kinds = [k for k in stats.get("by_kind", {}) if k in KIND_GROUPS]
    return {kind_group(k, video, quads) for k in kinds for video in (False, True)}


# ---- one group's stream ---------------------------------------------------------------------

class EmptyGroup(Exception):
    """A slot's shards hold no sample of a group (shards without stats, or a sample-split slot)."""


class BarrenGroup(EmptyGroup):
    """A slot's samples of a group read, but none made an example in two epochs in a row."""


class NoTrainingData(ValueError):
    """Nothing the mix asks for can be trained on; the message says why in one line."""


class GroupStream:
    """Batches of one group for one slot (rank × worker), resumable from `state()`."""

    def __init__(self, group: str, urls: list[str], filter_group: bool, config: DataConfig, slot: int,
                 num_slots: int, state: dict[str, Any] | None = None):
        self.group, self.urls, self.filter_group = group, urls, filter_group
        self.config, self.slot, self.num_slots = config, slot, num_slots
        self.make = ExampleMaker(config)
        self.batch_size = config.batch_size_of(group)
        self.skipped: Counter[str] = Counter()
        self.pending: dict[tuple[Any, ...], list[Example]] = {}
        self.ready: deque[list[Example]] = deque()
        state = state or {"epoch": 0, "consumed": 0, "pending": [], "ready": [], "skipped": {}}
        self.epoch, self.consumed = state["epoch"], 0
        self.skipped.update(state["skipped"])
        self._raw = self._raw_stream(self.epoch)
        self._replaying = True  # read errors met while replaying were counted when first met
        self._restore(state)
        self._replaying = False

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed,
                "pending": [[[e.epoch, e.key] for e in bucket] for bucket in self.pending.values() if bucket],
                "ready": [[[e.epoch, e.key] for e in batch] for batch in self.ready], "skipped": dict(self.skipped)}

    def _restore(self, state: dict[str, Any]) -> None:
        """Replay the raw stream to `consumed`, decoding only the examples still waiting. Examples
        a bucket carried over from an earlier epoch are found by replaying that epoch (rare: only
        buckets that were not filled when the epoch ended)."""
        waiting = {(epoch, key) for batch in state["pending"] + state["ready"] for epoch, key in batch}
        needed = {(epoch, key.rsplit("#", 1)[0]) for epoch, key in waiting}
        found: dict[tuple[int, str], Example] = {}

        def collect(sample: dict[str, Any], epoch: int) -> None:
            if (epoch, sample["__key__"]) in needed:
                found.update(((epoch, e.key), e) for e in self.make(sample, epoch) if (epoch, e.key) in waiting)

        for epoch in sorted({e for e, _ in waiting if e < self.epoch}):
            for sample in self._raw_stream(epoch, counting=False):
                collect(sample, epoch)
        for _ in range(state["consumed"]):
            collect(next(self._raw), self.epoch)
        if set(found) != waiting:
            raise RuntimeError(f"cannot resume the data stream: {len(waiting - set(found))} waiting examples are no "
                               "longer in the shards (were they rewritten?)")
        # Bucketed afresh, in their saved order: the same buckets when the config is the saved one, and
        # consistent batches when a resolution schedule re-made them at another size (aspects that
        # shared a bucket side at one resolution may not at another).
        for batch in state["ready"] + state["pending"]:
            for example in (found[tuple(w)] for w in batch):
                bucket = self.pending.setdefault(example.batch_key, [])
                bucket.append(example)
                if len(bucket) == self.batch_size:
                    self.ready.append(self.pending.pop(example.batch_key))

    def _raw_stream(self, epoch: int, counting: bool = True) -> Iterator[dict[str, Any]]:
        """This slot's undecoded samples of one epoch, shuffled; counts what it hands out."""
        import webdataset as wds

        c = self.config
        order = list(self.urls)
        random.Random(seed_of(c.seed, "shards", epoch)).shuffle(order)  # the same on every rank and worker
        by_shard = len(order) >= self.num_slots
        mine = order[self.slot::self.num_slots] if by_shard else order

        current: dict[str, str] = {}
        damaged: set[str] = set()  # one count per damaged shard and pass (a cut tar raises at two levels)

        def opened_shards() -> Iterator[dict[str, Any]]:
            for url in mine:
                current["url"] = url  # pulled lazily: the shard being read when an error comes
                try:
                    stream = open_shard(url)
                except Exception as e:  # noqa: BLE001 - an unreadable shard is counted, the rest train
                    counted(e)
                    continue
                try:
                    yield {"url": url, "stream": stream}
                finally:
                    stream.close()

        def counted(exn: Exception) -> bool:
            url = current.get("url", "")
            if url not in damaged and not self._replaying:
                self.skipped["read_error"] += 1
                log.warning("skipping the rest of unreadable shard %s: %s", url, exn)
            damaged.add(url)
            return True

        def samples() -> Iterator[dict[str, Any]]:
            files = wds.tariterators.tar_file_expander(opened_shards(), handler=counted)
            for i, sample in enumerate(wds.tariterators.group_by_keys(files, handler=counted)):
                if not by_shard and i % self.num_slots != self.slot:
                    continue  # fewer shards than slots: split sample by sample instead
                if self.filter_group and self._group(sample) != self.group:
                    continue
                yield sample

        rng = random.Random(seed_of(c.seed, "buffer", epoch, self.slot, self.group))
        buffer: list[dict[str, Any]] = []
        for sample in samples():
            if len(buffer) < c.shuffle_buffer:
                buffer.append(sample)
                continue
            j = rng.randrange(len(buffer))
            buffer[j], sample = sample, buffer[j]
            self.consumed += counting
            yield sample
        rng.shuffle(buffer)
        for sample in buffer:
            self.consumed += counting
            yield sample

    def _group(self, sample: dict[str, Any]) -> str | None:
        """The group a raw sample feeds, without decoding it (None for an unreadable kind)."""
        try:
            kind = sample_kind(sample)
        except (ValueError, KeyError):
            return None
        return kind_group(kind, "tgt.mp4" in sample, self.config.quads)

    def next_batch(self) -> list[Example]:
        """The next full batch; raises `EmptyGroup` when an epoch holds no sample of this group."""
        barren_epochs = 0  # epochs in a row that gave no example: the stream would spin forever
        made_this_epoch = self.consumed > 0
        while not self.ready:
            try:
                sample = next(self._raw)
            except StopIteration:
                if self.consumed == 0:
                    raise EmptyGroup(self.group) from None
                barren_epochs = 0 if made_this_epoch else barren_epochs + 1
                if barren_epochs >= 2:
                    raise BarrenGroup(self.group) from None
                self.epoch, self.consumed, made_this_epoch = self.epoch + 1, 0, False
                self._raw = self._raw_stream(self.epoch)
                continue
            try:
                examples = self.make(sample, self.epoch)
            except UnusableSample as e:
                self.skipped[e.reason] += 1
                log.warning("skipping sample %s: %s", sample.get("__key__"), e)
                continue
            except Exception as e:  # noqa: BLE001 - a bad sample is skipped and counted, never a crash
                self.skipped["decode_error"] += 1
                log.warning("skipping sample %s: %s: %s", sample.get("__key__"), type(e).__name__, e)
                continue
            made_this_epoch = True
            for example in examples:
                bucket = self.pending.setdefault(example.batch_key, [])
                bucket.append(example)
                if len(bucket) == self.batch_size:
                    self.ready.append(self.pending.pop(example.batch_key))
        return self.ready.popleft()


# ---- the dataset a DataLoader iterates ------------------------------------------------------

def collate(examples: list[Example] | list[SessionExample]) -> dict[str, Any]:
    """Examples of one shape -> uint8 tensors (N, C, T, H, W); float conversion happens on the
    training device, so workers ship a quarter of the bytes. Session sequences have their own layout."""
    if isinstance(examples[0], SessionExample):
        return collate_sessions(examples)

    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(e, name) for e in examples])).permute(0, 4, 1, 2, 3)

    batch = {"source": stack("source"), "target": stack("target"), "reference": stack("reference"),
             "instruction": [e.instruction for e in examples], "keys": [e.key for e in examples],
             "group": examples[0].group}
    if examples[0].region is not None:  # the batch key keeps examples with and without regions apart
        batch["region"] = stack("region")  # (N, 1, 1, H, W)
    return batch


class ShardStream(torch.utils.data.IterableDataset):
    """Endless batches for one rank. Each DataLoader worker runs one logical stream; `offset`
    rotates which stream a worker runs so a resumed DataLoader's round-robin continues in order."""

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1,
                 streams: dict[int, dict[str, Any]] | None = None, offset: int = 0):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.streams, self.offset = streams or {}, offset
        self.urls = list_shards(config.shards)
        self.groups = {url: shard_groups(url, config.quads) for url in self.urls}
        hollow = [u for u, groups in self.groups.items() if not groups]
        if hollow:
            log.warning("skipping %d shard(s) whose stats count no trainable sample: %s", len(hollow), ", ".join(hollow[:3]))
        self.weights = {g: w for g, w in config.mix.items() if w > 0 and any(g in gs for gs in self.groups.values())}
        if not self.weights:
            raise NoTrainingData(f"no shards at {config.shards} hold the groups the mix asks for ({config.mix})")
        slots = world_size * max(1, config.num_workers)
        if len(self.urls) < slots:
            log.warning("%d shard(s) for %d loader slots (ranks x workers): splitting them sample by sample; a slot "
                        "that gets none reads every slot's samples", len(self.urls), slots)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info else 1
        stream_id = ((info.id if info else 0) + self.offset) % workers
        slot, num_slots = self.rank * workers + stream_id, self.world_size * workers
        saved = self.streams.get(stream_id) or {"draws": 0, "groups": {}}
        weights = self.weights
        shared = set(saved.get("shared", []))  # groups this slot reads whole: its own split held none

        def group_stream(g: str, state: dict[str, Any] | None = None) -> GroupStream:
            urls = [u for u in self.urls if g in self.groups[u]]
            mixed = any(self.groups[u] != {g} for u in urls)
            where = (0, 1) if g in shared else (slot, num_slots)
            return GroupStream(g, urls, mixed, self.config, *where, state)

        streams = {g: group_stream(g, saved["groups"].get(g)) for g in weights}
        mixer = MixDraws(weights, seed_of(self.config.seed, "mix", slot), saved["draws"])
        empty = set(saved.get("empty", []))
        while True:
            group = mixer.draw()
            if group in empty:
                continue  # redrawn: the mix renormalises over the groups this slot has
            try:
                batch = collate(streams[group].next_batch())
            except EmptyGroup as e:
                what = "usable " if isinstance(e, BarrenGroup) else ""
                if num_slots > 1 and group not in shared:
                    # more slots than the data splits into: read every slot's samples (they repeat across
                    # slots) rather than lose the group's share of this slot's batches
                    log.warning("slot %d of %d got no %s%s samples of its own; it reads all of them", slot,
                                num_slots, what, group)
                    shared.add(group)
                    skipped, streams[group] = streams[group].skipped, group_stream(group)
                    streams[group].skipped.update(skipped)
                    continue
                log.warning("no %s%s samples for slot %d of %d (skipped: %s); mixing the other groups", what, group,
                            slot, num_slots, dict(streams[group].skipped) or "none")
                empty.add(group)
                if empty == set(weights):
                    skipped = sum((Counter(s.skipped) for s in streams.values()), Counter())
                    raise NoTrainingData(f"no usable samples of any group in {self.config.shards} "
                                         f"(skipped: {dict(skipped) or 'none'})") from None
                continue
            batch["position"] = {"stream": stream_id, "state": {
                "draws": mixer.draws, "empty": sorted(empty), "shared": sorted(shared),
                "groups": {g: s.state() for g, s in streams.items()}}}
            yield batch


class MixDraws:
    """Seeded weighted choice of a group per batch; its state is the number of draws made."""

    def __init__(self, weights: dict[str, float], seed: int, draws: int = 0):
        self.names = list(weights)
        total = sum(weights.values())
        self.cumulative = np.cumsum([weights[n] / total for n in self.names])
        self.rng = random.Random(seed)
        self.draws = 0
        for _ in range(draws):
            self.draw()

    def draw(self) -> str:
        self.draws += 1
        index = int(np.searchsorted(self.cumulative, self.rng.random(), side="right"))
        return self.names[min(index, len(self.names) - 1)]


class LoaderPosition:
    """The trainer's view of where the stream is: batches consumed and each stream's state after
    its last consumed batch (prefetched batches do not count). Goes into the checkpoint."""

    def __init__(self, num_workers: int, state: dict[str, Any] | None = None):
        self.num_streams = max(1, num_workers)
        state = state or {"num_streams": self.num_streams, "batches": 0, "streams": {}}
        if state["num_streams"] != self.num_streams:
            raise ValueError(f"the checkpoint's loader ran {state['num_streams']} workers; resume with "
                             f"data.num_workers={state['num_streams'] if state['num_streams'] > 1 else 0}")
        self.batches = state["batches"]
        self.streams = {int(k): v for k, v in state["streams"].items()}

    def consumed(self, batch: dict[str, Any]) -> None:
        self.batches += 1
        self.streams[batch["position"]["stream"]] = batch["position"]["state"]

    def skipped(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for stream in self.streams.values():
            for group in stream["groups"].values():
                total.update(group["skipped"])
        return dict(total)

    def state_dict(self) -> dict[str, Any]:
        return {"num_streams": self.num_streams, "batches": self.batches, "streams": self.streams}


def build_loader(config: DataConfig, rank: int = 0, world_size: int = 1,
                 position: LoaderPosition | None = None) -> tuple[torch.utils.data.DataLoader, LoaderPosition]:
    """A DataLoader continuing from `position` (a fresh one when None), and the position to update."""
    position = position or LoaderPosition(config.num_workers)
    dataset = ShardStream(config, rank, world_size, position.streams, offset=position.batches % position.num_streams)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=config.num_workers,
                                         persistent_workers=False, prefetch_factor=2 if config.num_workers else None)
    return loader, position
