"""Object storage end to end: `pipeline=sessions` from an `s3://` source manifest (relative media
paths) to `s3://` manifests, shards and VLM cache, against a real S3-protocol server on loopback
(moto in server mode; pyarrow.fs and s3fs reach it through AWS_ENDPOINT_URL, credentials from the
environment). A second run is SIGKILLed mid-stage and resumed by rerunning the same command."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.media import REPO

pytestmark = pytest.mark.slow
BUCKET = "curate-test"
CURATE = [sys.executable, "-m", "curation.cli"]


@pytest.fixture(scope="module")
def s3():
    """(environment for `curate` processes, boto3 client) with the example media uploaded."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://{host}:{port}", RAY_ADDRESS="")
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    for path in sorted((REPO / "examples" / "media").rglob("*.mp4")):
        client.upload_file(str(path), BUCKET, f"data/{path.relative_to(REPO)}")
    client.upload_file(str(REPO / "manifests" / "examples.jsonl"), BUCKET, "data/manifests/examples.jsonl")
    yield env, client
    server.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def run_args(run: str, *extra: str) -> list[str]:
    return [*CURATE, "run", "pipeline=sessions", "models=tiny", f"input=s3://{BUCKET}/data/manifests/examples.jsonl",
            f"output=s3://{BUCKET}/runs/{run}", f"vlm.cache_dir=s3://{BUCKET}/vlm-cache/{run}", "progress=false", *extra]


def ids_by_stage(client, run: str) -> dict[str, list[tuple[str, str]]]:
    import io

    import pyarrow.parquet as pq

    out: dict[str, list[tuple[str, str]]] = {}
    for key in keys(client, f"runs/{run}/"):
        stage, _, name = key[len(f"runs/{run}/"):].partition("/")
        if stage[:2].isdigit() and name.startswith("part-") and name.endswith(".parquet"):
            data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            rows = pq.read_table(io.BytesIO(data), columns=["sample_id", "status"]).to_pylist()
            out.setdefault(stage, []).extend((r["sample_id"], r["status"]) for r in rows)
    return {stage: sorted(rows) for stage, rows in sorted(out.items())}


@pytest.fixture(scope="module")
def full_run(s3):
    env, _client = s3
    proc = subprocess.run(run_args("full"), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return "full"


def test_sessions_pipeline_from_s3_input_to_s3_shards(s3, full_run, monkeypatch):
    import webdataset as wds

    from curation.train.data import open_shard

    env, client = s3
    summary = json.loads(client.get_object(Bucket=BUCKET, Key=f"runs/{full_run}/_summary.json")["Body"].read())
    funnel = {row["stage"]: row for row in summary["_funnel"]}
    assert funnel["ingest"]["kept"] == 3 and funnel["shard"]["kept"] >= 1  # every video read from S3
    card = json.loads(client.get_object(Bucket=BUCKET, Key=f"runs/{full_run}/shards/_dataset.json")["Body"].read())
    tars = [k for k in keys(client, f"runs/{full_run}/shards/") if k.endswith(".tar")]
    assert len(tars) == card["num_shards"] >= 1
    # The shards read back from S3 as WebDataset samples (the trainer's own opener, pyarrow.fs).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, env[name])
    samples = []
    for key in tars:
        url = f"s3://{BUCKET}/{key}"
        with open_shard(url) as stream:
            members = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
            samples += list(wds.tariterators.group_by_keys(members))
    assert len(samples) == card["num_samples"] == funnel["shard"]["kept"]
    assert all("turns.json" in s and "frame_0.jpg" in s for s in samples)
    # Manifests, run records and the VLM response cache are in the bucket too; nothing local.
    listed = keys(client, f"runs/{full_run}/")
    assert any(k.endswith("05-annotate/_run.json") for k in listed)
    assert len(keys(client, f"vlm-cache/{full_run}/")) >= funnel["annotate"]["kept"]
    ingest = ids_by_stage(client, full_run)["01-ingest"]
    assert len(ingest) == 3 and {status for _, status in ingest} == {"ok"}


def test_killed_mid_stage_then_rerun_matches_the_uninterrupted_run(s3, full_run):
    env, client = s3
    args = run_args("killed", "ingest.fragment_size=1")  # one fragment per video: resumable piece by piece
    proc = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:  # some of scene_split's fragments written, not all: mid-stage (pytest-timeout bounds it)
            done = [k for k in keys(client, "runs/killed/02-scene_split/") if k.rsplit("/", 1)[1].startswith("part-")]
            if 0 < len(done) < 3:
                break
            assert proc.poll() is None, "the run ended before it could be killed mid-stage"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not any(k.endswith("02-scene_split/_run.json") for k in keys(client, "runs/killed/"))
    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    record = json.loads(client.get_object(Bucket=BUCKET, Key="runs/killed/02-scene_split/_run.json")["Body"].read())
    assert record["fragments"]["skipped_complete"] >= 1  # finished fragments were not redone
    assert ids_by_stage(client, "killed") == ids_by_stage(client, full_run)


def test_media_are_stored_once_on_s3_and_browse_and_shards_read_them_back(s3, full_run, monkeypatch):
    import io

    import pyarrow.compute as pc
    import webdataset as wds
    from PIL import Image

    from curation.audit import media
    from curation.audit.catalog import RunCatalog
    from curation.core import storage
    from curation.train.data import open_shard

    env, client = s3
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, env[name])
    run_uri = f"s3://{BUCKET}/runs/{full_run}"
    # Media files only under the stages that made them; manifests hold run-relative references.
    stored = [k for k in keys(client, f"runs/{full_run}/") if "/media/" in k]
    assert stored and {k.split("/")[2] for k in stored} <= {"04-sample_frames", "06-ground"}
    sessions = storage.read_table(f"{run_uri}/08-dedup", filter=pc.field("status") == "ok").to_pylist()  # all sharded
    row = sessions[0]
    assert all(ref.startswith("04-sample_frames/media/") for ref in row["frames"])
    blobs = [client.get_object(Bucket=BUCKET, Key=f"runs/{full_run}/{ref}")["Body"].read() for ref in row["frames"]]
    # The browser reads the row with its frames from the bucket and renders them.
    browsed = RunCatalog(run_uri).row("08-dedup", row["sample_id"])
    assert browsed["frames"] == blobs
    Image.open(io.BytesIO(media.render(browsed, "frame-0"))).verify()
    # The shards hold the very bytes the references name.
    for key in (k for k in keys(client, f"runs/{full_run}/shards/") if k.endswith(".tar")):
        url = f"s3://{BUCKET}/{key}"
        with open_shard(url) as stream:
            for sample in wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])):
                if sample["__key__"] == row["sample_id"]:
                    assert [sample[f"frame_{i}.jpg"] for i in range(len(blobs))] == blobs
                    return
    raise AssertionError(f"session {row['sample_id']} is in no shard")
