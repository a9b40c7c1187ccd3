"""EditScore's prompts as read from the installed `editscore` package (prompts/editscore.py)."""

from __future__ import annotations

import subprocess
import sys

from curation.prompts.editscore import INSTRUCTION_SLOT, PINNED, editscore_prompts
from curation.prompts.judges import EditScorePQ, EditScoreSC


def test_the_prompts_are_read_without_importing_the_package():
    """`import editscore` would put the relative path 'editscore' first on sys.path and fail on
    requirements installed without (json_repair): the prompts must come without it."""
    check = ("import sys; from curation.prompts.editscore import editscore_prompts; editscore_prompts(); "
             "assert not [m for m in sys.modules if m.split('.')[0] == 'editscore'], 'editscore imported'; "
             "assert 'editscore' not in sys.path, sys.path[:3]")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_sc_and_pq_are_the_package_text_on_the_25_scale():
    sc, pq = editscore_prompts()
    assert (sc.name, sc.schema, pq.name, pq.schema) == ("editscore_sc", EditScoreSC, "editscore_pq", EditScorePQ)
    assert sc.file == pq.file == f"editscore=={PINNED}:editscore/vie_prompts.py"
    assert INSTRUCTION_SLOT in sc.text and INSTRUCTION_SLOT not in pq.text  # PQ sees no instruction
    for prompt in (sc, pq):
        assert "From scale 0 to 25" in prompt.text and "0 to 10" not in prompt.text
        assert prompt.version == f"{prompt.file}@{prompt.hash}"
    assert sc.render(instruction="Add a hat.").endswith("Editing instruction: Add a hat.\n")


def test_a_re_ask_differs_from_the_first_ask():
    sc, _ = editscore_prompts()
    first, again = sc.render(instruction="Add a hat."), sc.render(instruction="Add a hat.", feedback="invalid_json: x")
    assert again.startswith(first) and "invalid_json: x" in again
