"""Shard upload to an S3-protocol server on loopback against shard writes to local disk.

The shard stage writes each tar to a local temp file with `write_tar`, then either renames it into
a local shards dir or uploads it with `curation.core.storage.upload_file` (retries, 16 MiB parts). This
times both paths on the same tars, in the same run:
  local - write_tar + os.replace into a local directory (what a local run does)
  s3    - write_tar + upload_file to s3:// on a moto server on 127.0.0.1 (what a run with an
          s3:// output does; moto keeps objects in memory, so this measures the client path,
          the HTTP transfer and the server's handling, not a real network or disk)
MB/s of each and the ratio s3/local are printed. The tar payload is random bytes in 512 KiB
members (incompressible, like JPEG/H.264 members).

    .venv/bin/python bench/shard_upload.py [--shards 6] [--shard-mb 64]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from curation.core import storage
from curation.shards.writer import write_tar

MEMBER_BYTES = 512 << 10


def samples(shard_mb: int, seed: int) -> list[tuple[str, dict[str, bytes]]]:
    count = max(1, (shard_mb << 20) // (2 * MEMBER_BYTES))
    return [(f"s{seed:03d}{i:06d}", {"src.jpg": os.urandom(MEMBER_BYTES), "tgt.jpg": os.urandom(MEMBER_BYTES)})
            for i in range(count)]


def write_local(tmp: Path, out: Path, payload: list, name: str) -> int:
    part = tmp / f".tmp-{name}"
    write_tar(str(part), payload)
    size = part.stat().st_size
    os.replace(part, out / name)
    return size


def write_s3(tmp: Path, uri: str, payload: list, name: str) -> int:
    part = tmp / f".tmp-{name}"
    write_tar(str(part), payload)
    size = part.stat().st_size
    try:
        storage.upload_file(str(part), f"{uri}/{name}")
    finally:
        part.unlink()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=6, help="tars per path")
    parser.add_argument("--shard-mb", type=int, default=64, help="size of each tar")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import boto3

    boto3.client("s3").create_bucket(Bucket="curate-bench")
    payloads = [samples(args.shard_mb, i) for i in range(args.shards)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp, out = Path(tmp_dir), Path(tmp_dir) / "shards"
        out.mkdir()
        for label, write in (("local", lambda p, n: write_local(tmp, out, p, n)),
                             ("s3", lambda p, n: write_s3(tmp, "s3://curate-bench/shards", p, n))):
            write(payloads[0], "warmup.tar")
            start, total = time.perf_counter(), 0
            for i, payload in enumerate(payloads):
                total += write(payload, f"train-{i:06d}.tar")
            elapsed = time.perf_counter() - start
            results[label] = total / elapsed / 1e6
            print(f"{label:6s} {args.shards} x {total / args.shards / 1e6:.1f} MB in {elapsed:.2f} s: "
                  f"{results[label]:.0f} MB/s")
    server.stop()
    print(f"s3/local throughput ratio: {results['s3'] / results['local']:.2f}")


if __name__ == "__main__":
    main()
