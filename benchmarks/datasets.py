"""Synthetic datasets for the benchmark scenarios the replica cannot stress on its own: many
small files (per-file overhead), a version of 6,000 files (the no-op resync), a few 3 GB
objects (memory at 64 connections), and a 1,000,000-entry manifest (planning at scale).

Each dataset lives in a bucket of its own with a manifest in the release's format and a
dataset .toml for `vbo-mirror --dataset FILE`, so every tool fetches exactly what the
manifest names. Payloads are cheap to make and distinct per file: one random block, each
file cut from it at its own offset with its own 16-byte header, so their BLAKE2b differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

REGION = "us-west-2"
_BLOCK = random.Random(20210322).randbytes(64 << 20)


@dataclass
class Synthetic:
    name: str  # dataset / project name, e.g. "vbo-small"
    bucket: str
    version: str
    files: dict[str, int]  # key → size
    part_size: int = 8 << 20  # upload part size for objects above `multipart_threshold`
    multipart_threshold: int = 16 << 20
    manifest: dict = field(default_factory=dict)  # filled by load()

    @property
    def prefix(self) -> str:
        return f"{self.name}/"

    @property
    def manifest_name(self) -> str:
        return f"{self.name}_manifest_v{self.version}.json"

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def write_config(self, path: Path) -> Path:
        path.write_text(f'''name = "{self.name}"
bucket = "{self.bucket}"
region = "{REGION}"
prefix = "{self.prefix}"
manifest_prefix = "{self.prefix}manifests/"
manifest_pattern = '^{self.name}_manifest_v(?P<version>[0-9]+\\.[0-9]+\\.[0-9]+)\\.json$'
manifest_template = "{self.name}_manifest_v{{version}}.json"
''')
        return path


def payload(key: str, size: int) -> bytes:
    """Distinct, deterministic bytes for `key`: a header naming it, then a slice of the block
    (wrapping around) starting at an offset derived from the key."""
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    header = seed.to_bytes(8, "little") + size.to_bytes(8, "little")
    out = bytearray(header[:size])
    pos = seed % len(_BLOCK)
    while len(out) < size:
        take = min(size - len(out), len(_BLOCK) - pos)
        out += _BLOCK[pos:pos + take]
        pos = 0
    return bytes(out)


def small_files(n: int = 10_000, mean: int = 1 << 20, *, name: str = "vbo-small", version: str = "1.0.0",
                seed: int = 1) -> Synthetic:
    """n files of about `mean` bytes (uniform between half and one and a half times it)."""
    rng = random.Random(seed)
    files = {f"{name}/files/{i // 1000:03d}/file_{i:06d}.bin": rng.randint(mean // 2, mean * 3 // 2)
             for i in range(n)}
    return Synthetic(name, f"{name}-data", version, files)


def big_files(n: int = 2, size: int = 3 << 30, *, name: str = "vbo-big", version: str = "1.0.0") -> Synthetic:
    files = {f"{name}/files/big_{i}.bin": size - i * 4097 for i in range(n)}  # sizes not aligned, on purpose
    return Synthetic(name, f"{name}-data", version, files, part_size=64 << 20, multipart_threshold=64 << 20)


def manifest_doc(ds: Synthetic, entries: dict[str, tuple[str, str]]) -> bytes:
    """The release's manifest format; `entries`: key → (version id, BLAKE2b)."""
    data = {str(i + 1): {"url": f"https://{ds.bucket}.s3.{REGION}.amazonaws.com/{key}", "version_id": vid,
                         "file_hash": h}
            for i, (key, (vid, h)) in enumerate(sorted(entries.items()))}
    doc = {"project_name": ds.name, "manifest_version": ds.version, "metadata_file_id_column_name": "file_id",
           "data_pipeline": [{"name": "synthetic", "version": "1", "comment": "vbo-mirror benchmark"}],
           "metadata_files": {}, "data_files": data}
    return json.dumps(doc, indent=1).encode()


async def load(endpoint_url: str, ds: Synthetic, *, concurrency: int = 16) -> Synthetic:
    """Create the bucket (versioned, anonymous read) and upload every file, then the manifest."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mirror.sandbox.server import admin_client, create_public_bucket

    entries: dict[str, tuple[str, str]] = {}
    async with admin_client(endpoint_url) as s3:
        await create_public_bucket(s3, ds.bucket)
        sem = asyncio.Semaphore(concurrency)

        async def put(key: str, size: int) -> None:
            async with sem:
                body = await asyncio.to_thread(payload, key, size)
                digest = await asyncio.to_thread(lambda: hashlib.blake2b(body).hexdigest())
                entries[key] = (await _put(s3, ds, key, body), digest)

        await asyncio.gather(*(put(k, s) for k, s in ds.files.items()))
        doc = manifest_doc(ds, entries)
        await s3.put_object(Bucket=ds.bucket, Key=f"{ds.prefix}manifests/{ds.manifest_name}", Body=doc)
    ds.manifest = json.loads(doc)
    return ds


async def _put(s3, ds: Synthetic, key: str, data: bytes) -> str:
    if len(data) <= ds.multipart_threshold:
        return (await s3.put_object(Bucket=ds.bucket, Key=key, Body=data))["VersionId"]
    up = await s3.create_multipart_upload(Bucket=ds.bucket, Key=key)
    parts = []
    for n, off in enumerate(range(0, len(data), ds.part_size), start=1):
        r = await s3.upload_part(Bucket=ds.bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                                 Body=data[off:off + ds.part_size])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    r = await s3.complete_multipart_upload(Bucket=ds.bucket, Key=key, UploadId=up["UploadId"],
                                           MultipartUpload={"Parts": parts})
    return r["VersionId"]


def million_entry_manifest(path: Path, n: int = 1_000_000, *, name: str = "vbo-huge", version: str = "1.0.0") -> Path:
    """A manifest of `n` data files (no objects behind it): what planning costs at that scale.
    Written streaming, one entry at a time, so making it costs little memory."""
    bucket = f"{name}-data"
    with open(path, "w") as f:
        f.write(json.dumps({"project_name": name, "manifest_version": version,
                            "metadata_file_id_column_name": "file_id", "data_pipeline": [],
                            "metadata_files": {}})[:-1])
        f.write(', "data_files": {')
        for i in range(n):
            h = hashlib.blake2b(i.to_bytes(8, "little")).hexdigest()
            kind = "behavior_sessions/behavior_session" if i % 3 else "behavior_ophys_experiments/behavior_ophys_experiment"
            f.write(("" if i == 0 else ", ")
                    + f'"{i + 1}": {{"url": "https://{bucket}.s3.{REGION}.amazonaws.com/{name}/{kind}_{800000000 + i}.nwb", '
                    f'"version_id": "{h[:32]}", "file_hash": "{h}"}}')
        f.write("}}")
    return path
