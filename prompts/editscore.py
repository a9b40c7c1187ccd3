"""EditScore's two judging prompts, taken from the `editscore` package (VectorSpaceLab/EditScore,
PyPI `editscore`, pinned in pyproject's `editscore` extra) rather than written by us: its
reward models were trained on exactly this text, so a rewording would judge with a prompt they
never saw.

The text is read from the installed file `editscore/vie_prompts.py` through the distribution's
metadata, and its string constants are taken out of the parsed source (`ast.literal_eval`);
nothing of the package is imported or run. Importing even the submodule
`editscore.vie_prompts` would first run `editscore/__init__.py`, which inserts the relative path
'editscore' at the front of `sys.path` (so any folder of that name in a worker's current
directory would shadow modules) and imports the package's parsing helpers, whose requirements
(`json_repair`, `regex`, numpy) curate does not install: the package is installed with
`--no-deps` (scripts/setup.sh), because its declared requirements (torch, transformers, peft,
accelerate, qwen-vl-utils, none pinned) are for running its own models, not for its prompt text.

Assembly follows `EditScore.__init__` (editscore 0.2, `editscore/__init__.py`):
  SC = "\\n".join([context, two-image edit rule, SC rule with every "10" replaced by the score range])
  PQ = "\\n".join([context, PQ rule with every "10" replaced by the score range])
with `<instruction>` in SC replaced by the edit's instruction (`EditScore.evaluate`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel

from curation.prompts.judges import EDITSCORE_RANGE, EditScorePQ, EditScoreSC

DISTRIBUTION = "editscore"
PINNED = "0.2"  # pyproject's `editscore` extra (tests/release/test_pyproject.py keeps the two equal)
PROMPTS_FILE = "editscore/vie_prompts.py"  # inside the wheel
INSTALL = f"pip install --no-deps 'editscore=={PINNED}'"  # as scripts/setup.sh does
INSTRUCTION_SLOT = "<instruction>"  # where EditScore.evaluate puts the instruction


class EditScoreNotInstalled(ImportError):
    """judge=editscore without the `editscore` package."""


@cache
def vie_prompts() -> tuple[str, dict[str, str]]:
    """(version of the installed `editscore`, {name: text} of the string constants of its
    `vie_prompts.py`), read without importing the package (see the module docstring)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise EditScoreNotInstalled(f"judge=editscore reads its prompts from the 'editscore' package: {INSTALL}") from e
    if dist.version != PINNED:  # another release may word its prompts otherwise
        raise EditScoreNotInstalled(f"editscore {dist.version} is installed; judge=editscore uses the prompts of {PINNED}: {INSTALL}")
    path = next((f for f in dist.files or [] if f.as_posix() == PROMPTS_FILE), None)
    if path is None:
        raise EditScoreNotInstalled(f"editscore {dist.version} has no {PROMPTS_FILE}: {INSTALL}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=PROMPTS_FILE)
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                constants[node.targets[0].id] = value.value
    return dist.version, constants


def _constant(constants: dict[str, str], name: str) -> str:
    if name not in constants:
        raise EditScoreNotInstalled(f"{PROMPTS_FILE} has no string {name}: {INSTALL}")
    return constants[name]


@dataclass(frozen=True)
class EditScorePrompt:
    """One of EditScore's two prompts, standing in for a `PromptTemplate`: `name`, `version` (what
    `_run.json` records), `hash` (part of the response-cache key), `schema` and `render`."""

    name: str
    file: str  # "editscore==<version>:editscore/vie_prompts.py"
    text: str  # the assembled prompt, INSTRUCTION_SLOT still in it for SC
    schema: type[BaseModel]

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def version(self) -> str:
        return f"{self.file}@{self.hash}"

    def render(self, *, instruction: str, feedback: str | None = None, **_unused: object) -> str:
        """The prompt as EditScore sends it. `feedback` (a validation re-ask) is our addition, after
        its text, so the re-asked request differs from the first and gets its own cache entry."""
        text = self.text.replace(INSTRUCTION_SLOT, instruction)
        if feedback:
            text += f"\nYour previous answer could not be used ({feedback}). Answer again in the output format above.\n"
        return text


@cache
def editscore_prompts() -> tuple[EditScorePrompt, EditScorePrompt]:
    """(semantic consistency, perceptual quality), assembled as `EditScore.__init__` does with
    score_range 25 (judges.EDITSCORE_RANGE, the range the EditScore models were trained on)."""
    version, constants = vie_prompts()
    context = _constant(constants, "_context_no_delimit_reasoning_first")
    score_range = f"{EDITSCORE_RANGE:g}"
    sc = "\n".join([context, _constant(constants, "_prompts_0shot_two_image_edit_rule"),
                    _constant(constants, "_prompts_0shot_tie_rule_SC").replace("10", score_range)])
    pq = "\n".join([context, _constant(constants, "_prompts_0shot_rule_PQ").replace("10", score_range)])
    file = f"{DISTRIBUTION}=={version}:{PROMPTS_FILE}"
    return (EditScorePrompt("editscore_sc", file, sc, EditScoreSC), EditScorePrompt("editscore_pq", file, pq, EditScorePQ))
