"""write_prompts: an LLM writes the source prompt, the edited prompt and an instruction per (scene, task) (ImVideoEdit §3).

ImVideoEdit (seed 000, §3) gives every kept scene several editing tasks and has an LLM write, per
(scene, task), a prompt for the original image and one for the edited image. The edited prompt
spells out the whole image after the edit rather than only the change: text-to-video backbones
were never trained on sparse edit instructions and tend to ignore them, while a full description
of the target is a signal they follow. The `instruction` (an imperative edit instruction) is ours,
for trainers that take instructions instead of target captions.

One text-only request per entry of the scene's `tasks` (prompts/synthesis_prompts.v1.j2); a task
listed n times is asked n times, each request numbered (`variant`) so the answers differ and the
response cache does not hand one answer back n times. Each answer becomes a `prompt` row, a child of
the scene (`parent_ids=[scene id]`, id from the scene and (task, its occurrence among the scene's
tasks)), with `task_type`, its curate `category`, the three texts and the request's `vlm_usage`.

Failures: a request that failed after retries (API error, exhausted budget) makes the scene one
`status=error` row under the scene's own id, with the whole scene's usage. `retry_errors=true`
reruns error rows by their input id, so the scene is asked again as a whole, and the answers that
were already paid for come back from the response cache. An answer that fails the schema after the
re-ask drops only that child, as `prompt_unparseable`; the scene's other tasks are kept.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core import layout, storage
from curation.core.estimate import SpendEstimate, measured_use
from curation.core.stage import Row
from curation.prompts.synthesis import TASK_CATEGORY, TASK_TYPES, ScenePrompts
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.stages.base.vlm import VLMStage


class WritePromptsColumns(BaseModel):
    task_type: str | None = Field(None, description="the edit task (ImVideoEdit App. B), e.g. object_removal")
    category: str | None = Field(None, description="the task's curate category (curation/labels/categories.py)")
    source_prompt: str | None = Field(None, description="text-to-image prompt of the scene before the edit")
    edit_prompt: str | None = Field(None, description="full description of the image after the edit (what the edit model renders)")
    instruction: str | None = Field(None, description="imperative edit instruction (ours, for instruction-based trainers)")
    vlm_usage: VLMUsage | None = Field(None, description="this prompt's request: tokens, cache hits and estimated USD")


class WritePrompts(VLMStage):
    """Per (scene, task) an LLM writes a source prompt, a full edited prompt and an instruction: one prompt row each."""

    name: ClassVar[str] = "write_prompts"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = WritePromptsColumns

    template: str = Field("synthesis_prompts", description="prompt template name (prompts/); its hash is in the cache key")

    @field_validator("template")
    @classmethod
    def _prompts_template(cls, name: str) -> str:
        return answering_template(name, (ScenePrompts,), "scene prompts")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def spend_estimate(self, stage_dir: str) -> SpendEstimate:
        """Per input scene, not per manifest row: each prompt row records its own request, so the
        measured usage is summed over a scene's children first."""
        per_scene: dict[str, VLMUsage] = {}
        if layout.manifest_parts(stage_dir):
            table = storage.read_table(stage_dir, columns=["sample_id", "kind", "parent_ids", "vlm_usage"])
            for row in table.to_pylist():
                if row["vlm_usage"]:
                    scene = row["parent_ids"][0] if row["kind"] == "prompt" and row["parent_ids"] else row["sample_id"]
                    per_scene[scene] = per_scene.get(scene, VLMUsage()) + VLMUsage(**row["vlm_usage"])
        source, rows, use = measured_use([u.model_dump() for u in per_scene.values()], self.expected)
        return SpendEstimate(source=source, measured_rows=rows, requests_per_row=use.requests_per_row,
                             prompt_tokens=use.prompt_tokens, completion_tokens=use.completion_tokens,
                             usd_per_request=self.usd_per_request(use.prompt_tokens, use.completion_tokens))

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.templates()[0]
        asks = [(r, task, i, n) for r, row in enumerate(rows) for task, i, n in _numbered(row.get("tasks") or [])]

        def request(a: int, feedback: str | None) -> VLMRequest:
            r, task, i, n = asks[a]
            text = template.render(environment=rows[r]["environment"], conditions=rows[r]["conditions"], task=task,
                                   task_description=TASK_TYPES[task], variant=i + 1, variants=n, feedback=feedback)
            return VLMRequest(prompt=text, images=[], schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(a, None) for a in range(len(asks))], request)
        answers: dict[int, list[tuple[str, int, VLMReply | VLMError, VLMUsage]]] = {r: [] for r in range(len(rows))}
        for (r, task, i, _), reply, spent in zip(asks, replies, usage):
            answers[r].append((task, i, reply, spent))
        return [out for r, row in enumerate(rows) for out in self._children(row, answers[r])]

    def _children(self, scene: Row, answers: list[tuple[str, int, VLMReply | VLMError, VLMUsage]]) -> list[Row]:
        if not answers:
            return [self.error_row(scene, "no_tasks: the scene lists no task (run plan_scenes)", "dropped")]
        failed = next(((task, reply) for task, _, reply, _ in answers if isinstance(reply, VLMError)), None)
        if failed is not None:
            spent = sum((u for *_, u in answers), VLMUsage())
            return [self.error_row(scene, f"{failed[1].reason} ({failed[0]} request)", vlm_usage=spent.model_dump())]
        return [self._child(scene, task, i, reply, spent) for task, i, reply, spent in answers]

    def _child(self, scene: Row, task: str, i: int, reply: VLMReply, usage: VLMUsage) -> Row:
        answer: ScenePrompts | None = reply.parsed
        columns: dict[str, Any] = {
            "task_type": task, "category": TASK_CATEGORY[task], "vlm_usage": usage.model_dump(),
            "source_prompt": answer.source_prompt if answer else None, "edit_prompt": answer.edit_prompt if answer else None,
            "instruction": answer.instruction if answer else None,
        }
        child = self.child_row(scene, kind="prompt", span=(task, i), **columns)
        if answer is None:
            child.update(status="dropped", reason=f"prompt_unparseable: {reply.error}")
        return child


def _numbered(tasks: list[str]) -> list[tuple[str, int, int]]:
    """(task, its occurrence among the scene's tasks, how many times the scene lists it), in list order."""
    counts, seen = Counter(tasks), Counter()
    numbered = []
    for task in tasks:
        numbered.append((task, seen[task], counts[task]))
        seen[task] += 1
    return numbered
