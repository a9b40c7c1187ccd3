"""A run for the auditor tools: the example pipeline (`pipeline=sessions models=tiny` on
manifests/examples.jsonl) with its VLM answered by a scripted OpenAI-compatible server, so turns
carry real instructions and changed entities, and Grounding DINO's thresholds lowered for the tiny
RANDOM detector (its scores are arbitrary, as in tests/test_ground.py) so region-of-edit masks
exist. The VLM's instruction carries an XSS payload: a VLM's text is untrusted input.
"""

from __future__ import annotations

from pathlib import Path

from curation.config import compose
from curation.runner import run

from conftest import REPO
from fake_vlm_servers import ok, openai_server
from test_annotate import VALID

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
INSTRUCTION = f"Move the white car forward {XSS} and add a man in a red jacket."
ANNOTATION = {**VALID, "summary_change": INSTRUCTION}  # test_annotate's car and man, with the payload


def build_audit_run(root: Path) -> Path:
    """Run the example pipeline into `root/run` (needs a Ray runtime) and return the run dir."""
    out = root / "run"
    with openai_server(default=ok(ANNOTATION, prompt_tokens=1200, completion_tokens=150)) as server:
        cfg = compose(["pipeline=sessions", "models=tiny", f"input={REPO / 'manifests' / 'examples.jsonl'}",
                       f"output={out}", "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=annotator",
                       "vlm.api_key_env=null", "vlm.max_retries=1", f"vlm.cache_dir={root / 'vlm-cache'}",
                       "ground.detector.box_threshold=0.05", "ground.detector.text_threshold=0.05",
                       "progress=false"])
        run(cfg)
    return out


def browse_images(run_dir: Path, sample_id: str) -> dict[str, bytes]:
    """The images `curate browse` shows on a sample's page ({item name: JPEG}), through the app."""
    import re

    from starlette.testclient import TestClient

    from curation.audit.app import build_app

    client = TestClient(build_app(str(run_dir)))
    page = client.get(f"/sample/{sample_id}")
    assert page.status_code == 200, page.text
    images = {}
    for url in re.findall(r'<img src="(/media/[^"]+\.jpg)"', page.text):
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", url
        images[url.rsplit("/", 1)[1][: -len(".jpg")]] = response.content
    return images
