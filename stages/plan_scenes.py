"""plan_scenes: the scene pool of `pipeline=synthesis`, expanded from a plan (ImVideoEdit §3).

ImVideoEdit (seed 000, §3) defines base environments and compositional conditions, and samples
conditions for each environment to form scene descriptions. `input=` is a plan spec file, YAML or
JSON lines (each line a JSON object; the lines' keys together make the spec, a key set twice is an
error):

    environments: [a mountain lake, a city bakery]     # or `propose:` below
    conditions: [light fog, at dusk, a red kite overhead, early spring]
    conditions_per_scene: 2          # or [1, 3]: drawn per scene from that range
    scenes_per_environment: 5
    tasks: {style_transfer: 1, object_removal: 2}      # task type -> edits per scene
    seed: 0

or, instead of the two lists, `propose: {seeds: [harbour, winter], environments: 20, conditions: 30}`:
an LLM grows both lists from the seed words (prompts/scene_proposal.v1.j2). The proposal is saved
as `plan.yaml` in the stage's listing directory (`<stage_dir>/_input/`) before any scene is made,
and a rerun reads it back instead of asking again. It is made on the driver while the run lists its
input, before the run's spend ledger starts: its cost is in `plan.yaml` and `_run.json`, capped by
`budget.max_usd` on its own, and not in `_spend.json`.

Expansion is deterministic: scene k of environment e draws its conditions with a generator seeded
by (seed, e, k), and its id hashes (e, its conditions, k). A rerun lists the same rows; a larger
`scenes_per_environment` only adds scenes (the listed ones keep their ids and fragments). The
tasks are not part of a scene's id: a scene already listed keeps the tasks it was listed with, so
a plan whose tasks change belongs in a new output directory.

A bad spec fails with one line naming its key. `check_input` reads and checks it without asking or
writing anything, for a pre-flight check to call before Ray starts.
"""

from __future__ import annotations

import json
import random
from pathlib import PurePosixPath
from typing import Any, ClassVar

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.backends.vlm import VLMError, VLMRequest, VLMUsage, make_vlm
from curation.core import layout, storage
from curation.core.estimate import SpendEstimate
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.core.stage import Row, SourceStage
from curation.prompts.synthesis import TASK_TYPES, SceneProposal
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.stages.base.vlm import VLMStage

PLAN_FILE = "plan.yaml"  # the saved proposal, in the stage's listing directory


class PlanScenesColumns(BaseModel):
    environment: str | None = Field(None, description="the scene's base environment or entity")
    conditions: list[str] | None = Field(None, description="the conditions sampled for the scene, in the order drawn")
    scene_index: int | None = Field(None, description="k: the scene's number within its environment")
    tasks: list[str] | None = Field(None, description="task types to make for the scene, each repeated by its count per scene")
    plan_seed: int | None = Field(None, description="the plan's seed the conditions were drawn with")


# ---- the spec --------------------------------------------------------------------------------


class Proposal(BaseModel):
    """`propose:`: the LLM grows the environment and condition lists from seed words."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[str] = Field(min_length=1, description="seed words or phrases: the theme of the plan")
    environments: int = Field(gt=0, description="environments to propose")
    conditions: int = Field(gt=0, description="conditions to propose")


class PlanSpec(BaseModel):
    """What `input=` holds."""

    model_config = ConfigDict(extra="forbid")

    environments: list[str] | None = Field(None, min_length=1, description="base environments or entities")
    conditions: list[str] | None = Field(None, min_length=1, description="conditions sampled into scenes")
    propose: Proposal | None = Field(None, description="instead of the two lists: let an LLM propose them")
    conditions_per_scene: int | tuple[int, int] = Field(description="conditions per scene, or an inclusive [min, max] range")
    scenes_per_environment: int = Field(gt=0, description="scenes made per environment")
    tasks: dict[str, int] = Field(min_length=1, description="task type -> edits of it per scene")
    seed: int = Field(description="seeds the condition sampling")

    @field_validator("environments", "conditions")
    @classmethod
    def _distinct(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        cleaned = [v.strip() for v in values]
        if not all(cleaned) or len(set(cleaned)) != len(cleaned):
            raise ValueError("must be distinct, non-blank strings")
        return cleaned

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(tasks) - set(TASK_TYPES))
        if unknown:
            raise ValueError(f"unknown task type(s) {', '.join(unknown)}; known: {', '.join(TASK_TYPES)}")
        if any(count < 0 for count in tasks.values()) or not any(tasks.values()):
            raise ValueError("counts must be >= 0 with at least one above 0")
        return tasks

    @model_validator(mode="after")
    def _one_source_of_lists(self) -> PlanSpec:
        lists = self.environments is not None or self.conditions is not None
        if lists == (self.propose is not None):
            raise ValueError("give either environments and conditions, or propose")
        if lists and (self.environments is None or self.conditions is None):
            raise ValueError("environments and conditions are both needed")
        lo, hi = self.bounds()
        available = self.propose.conditions if self.propose else len(self.conditions or [])
        if not 1 <= lo <= hi <= available:
            raise ValueError(f"conditions_per_scene: need 1 <= min <= max <= {available} (the conditions), got {lo}..{hi}")
        return self

    def bounds(self) -> tuple[int, int]:
        k = self.conditions_per_scene
        return (k, k) if isinstance(k, int) else k

    def task_list(self) -> list[str]:
        """Each task type repeated by its count, in TASK_TYPES order (the spec's order does not matter)."""
        return [task for task in TASK_TYPES for _ in range(self.tasks.get(task, 0))]


def read_spec(path: str) -> PlanSpec:
    """The plan spec in `path`; a ValueError of one line naming the key at fault."""
    try:
        text = storage.read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"plan_scenes: input={path}: unreadable: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = _parse(path, text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ValueError(f"plan_scenes: input={path}: not valid {'JSON lines' if _is_jsonl(path) else 'YAML'}: "
                         f"{str(e).splitlines()[0]}") from None
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
                    for err in e.errors()]
        raise ValueError(f"plan_scenes: input={path}: {'; '.join(problems)}") from None


def _is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".json"))


def _parse(path: str, text: str) -> Any:
    if not _is_jsonl(path):
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"plan_scenes: input={path}: the spec must be a mapping of keys (environments, conditions, ...)")
        return data
    data: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not isinstance(item, dict):
            raise ValueError(f"plan_scenes: input={path}: line {number} is not a JSON object")
        twice = sorted(set(item) & set(data))
        if twice:
            raise ValueError(f"plan_scenes: input={path}: line {number}: {', '.join(twice)} set twice")
        data.update(item)
    return data


def expand(spec: PlanSpec, environments: list[str], conditions: list[str], spec_name: str) -> list[Row]:
    """Every scene of the plan, as source rows (deterministic: see the module docstring)."""
    lo, hi = spec.bounds()
    tasks = spec.task_list()
    rows = []
    for environment in environments:
        for k in range(spec.scenes_per_environment):
            rng = random.Random(f"{spec.seed}/{environment}/{k}")  # str seeds hash stably across processes
            drawn = rng.sample(conditions, rng.randint(lo, hi))
            uri = f"plan:{spec_name}#{environment}/{k}"
            rows.append(dict(sample_id=make_sample_id("scene", uri, environment, tuple(drawn), k), parent_ids=[], kind="scene",
                             source_uri=uri, status="ok", stage="sources", stage_version="1", environment=environment,
                             conditions=drawn, scene_index=k, tasks=tasks, plan_seed=spec.seed))
    return sorted(rows, key=lambda r: r["sample_id"])


# ---- the stage -------------------------------------------------------------------------------


class PlanScenes(VLMStage, SourceStage):
    """Scenes from a plan spec: environments x sampled conditions, each with its editing tasks (ImVideoEdit §3)."""

    name: ClassVar[str] = "plan_scenes"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = PlanScenesColumns

    fragment_size: int = Field(64, gt=0, description="scenes per input fragment (the unit of resume)")
    template: str = Field("scene_proposal", description="prompt template of `propose:` (prompts/); its hash is in the cache key")

    @field_validator("template")
    @classmethod
    def _proposal_template(cls, name: str) -> str:
        return answering_template(name, (SceneProposal,), "a scene proposal")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def check_input(self, spec: str | None) -> PlanSpec:
        """The spec read and checked, nothing asked or written: what a pre-flight check calls so a
        bad spec fails in one line before Ray starts."""
        if not spec:
            raise ValueError("plan_scenes reads a plan spec: give input=<plan.yaml or plan.jsonl>")
        return read_spec(spec)

    def list_sources(self, spec: str | None, listing_dir: str) -> pa.Table:
        plan = self.check_input(spec)
        if plan.propose is None:
            environments, conditions = plan.environments, plan.conditions
        else:
            environments, conditions = self._proposal(plan.propose, listing_dir)
        rows = expand(plan, environments, conditions, PurePosixPath(spec).name)
        return rows_to_table(rows, arrow_schema(SampleRow, PlanScenesColumns))

    def process(self, row: Row) -> list[Row]:
        return [self.enrich(row)]

    # ---- the proposal --------------------------------------------------------------------
    def _proposal(self, propose: Proposal, listing_dir: str) -> tuple[list[str], list[str]]:
        """The saved proposal, else a new one asked for and saved before anything is expanded."""
        path = storage.join(listing_dir, PLAN_FILE)
        if storage.exists(path):
            saved = yaml.safe_load(storage.read_bytes(path))
            if saved.get("seeds") != propose.seeds:
                raise ValueError(f"plan_scenes: {path} was proposed from seeds {saved.get('seeds')}, the spec's propose.seeds "
                                 f"are {propose.seeds}: use a new output directory, or delete it to propose again")
            for key in ("environments", "conditions"):
                if len(saved[key]) < getattr(propose, key):
                    raise ValueError(f"plan_scenes: {path} holds {len(saved[key])} {key}, propose.{key} asks for "
                                     f"{getattr(propose, key)}: use a new output directory, or delete it to propose again")
            return saved["environments"][:propose.environments], saved["conditions"][:propose.conditions]
        if self._media is None:
            raise ValueError("plan_scenes: propose asks an LLM once per run and saves its answer in the run; outside a run "
                             "(a dry run) nothing is asked: run it once, or give environments and conditions")
        proposal, usage = self._ask_proposal(propose)
        storage.write_bytes_atomic(path, yaml.safe_dump({
            "seeds": propose.seeds, "environments": proposal.environments, "conditions": proposal.conditions,
            "model": self.models()["vlm"].display, "prompt": self.templates()[0].version, "vlm_usage": usage.model_dump(),
        }, sort_keys=False, allow_unicode=True).encode())
        return proposal.environments, proposal.conditions

    def _ask_proposal(self, propose: Proposal) -> tuple[SceneProposal, VLMUsage]:
        template = self.templates()[0]
        usage = VLMUsage()
        feedback = None
        with make_vlm(self.vlm, self.budget()) as backend:
            for _ in range(self.validation_retries + 1):
                text = template.render(seeds=propose.seeds, num_environments=propose.environments,
                                       num_conditions=propose.conditions, feedback=feedback)
                (reply,) = backend.generate_many([VLMRequest(prompt=text, images=[], schema=template.schema,
                                                             cache_salt=template.hash)])
                usage = usage + (reply.usage or VLMUsage())
                if isinstance(reply, VLMError):
                    raise ValueError(f"plan_scenes: the proposal request failed: {reply.reason}")
                feedback = reply.error if reply.parsed is None else _short_lists(reply.parsed, propose)
                if feedback is None:
                    return reply.parsed, usage
        raise ValueError(f"plan_scenes: the LLM's proposal was unusable after {self.validation_retries + 1} tries: {feedback}")

    # ---- what the base classes would do per row ----------------------------------------------
    def setup(self) -> None:
        """Workers only pass the listed scenes on: no model to load."""

    def uses_gpu(self) -> bool:
        return False  # the one proposal request is made on the driver

    def on_driver_start(self) -> None:
        """Nothing to share: the proposal was asked while listing, before this (so `vlm=vllm` needs
        `vlm.server.urls` for it: the run starts no servers for a source stage), and workers pay nothing."""

    def on_driver_end(self) -> None:
        """Nothing was started."""

    def api_check(self) -> str | None:
        return None  # only `propose:` asks, once, and a failure then names itself

    def spend_estimate(self, stage_dir: str) -> SpendEstimate | None:
        return None  # nothing is paid per scene; the proposal is one request per run

    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """The proposal's model, prompt and cost, when the plan was proposed."""
        path = storage.join(layout.input_dir(stage_dir), PLAN_FILE)
        if not storage.exists(path):
            return {}
        saved = yaml.safe_load(storage.read_bytes(path))
        return {"vlm": {"model": saved["model"], "prompts": {self.template: saved["prompt"]}, "usage": saved["vlm_usage"],
                        "budget_max_usd": self.max_usd, "budget_exhausted": 0}}


def _short_lists(proposal: SceneProposal, propose: Proposal) -> str | None:
    """What the proposal lacks (fed back to the LLM), or None. More than asked for is cut, never refused."""
    short = [f"{len(got)} {what} where {want} were asked for" for what, got, want in
             (("environments", proposal.environments, propose.environments),
              ("conditions", proposal.conditions, propose.conditions)) if len(got) < want]
    return "; ".join(short) or None
