"""Hostile and malformed manifests served by a real S3 server: one clear line naming the file
and the problem, exit code 2, and nothing written to cache_dir."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from conftest import tree_files, write_dataset_config

from mirror.sandbox.server import admin_client, create_public_bucket

BUCKET = "hostile-ophys-data"
PREFIX = "hostile/"
HOST = f"https://{BUCKET}.s3.us-west-2.amazonaws.com"
GOOD_HASH = "0" * 128
LONG_KEY = "hostile/behavior_sessions/" + "n" * 246 + ".nwb"  # a 250-byte file name
LONG_BODY = b"long name " * 1000


def name(v: str) -> str:
    return f"hostile_manifest_v{v}.json"


def entry(key: str, **over) -> dict:
    return {"url": f"{HOST}/{key}", "version_id": "v1", "file_hash": GOOD_HASH, **over}


def manifest(version: str, data: dict | None = None, **over) -> bytes:
    doc = {"project_name": "hostile", "manifest_version": version, "metadata_file_id_column_name": "file_id",
           "data_pipeline": [], "metadata_files": {"t": entry("hostile/project_metadata/t.csv")},
           "data_files": data if data is not None else {"1": entry("hostile/behavior_sessions/b1.nwb")}}
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


CASES = {
    "0.0.1": (b"this is not json", "not valid JSON"),
    "0.0.2": (manifest("0.0.2", data_files=None), "missing required key 'data_files'"),
    "0.0.3": (manifest("0.0.3", {"1": {"url": "https://visual-behavior-ophys-data.s3.us-west-2.amazonaws.com/hostile/x.nwb",
                                       "version_id": "v1", "file_hash": GOOD_HASH}}), "outside the dataset bucket"),
    "0.0.4": (manifest("0.0.4", {"1": entry("elsewhere/x.nwb")}), "outside the dataset prefix"),
    "0.0.5": (manifest("0.0.5", {"1": entry("hostile/../../../tmp/pwned.nwb")}), "'..' segment"),
    "0.0.6": (manifest("0.0.6", {"1": {"url": f"{HOST}//tmp/pwned.nwb", "version_id": "v1",
                                       "file_hash": GOOD_HASH}}), "absolute path"),
    "0.0.7": (manifest("0.0.7", {"1": entry("hostile/x.nwb", file_hash="abc123")}), "not 128 lowercase hex"),
    "0.0.8": (manifest("0.0.8", manifest_version="latest-and-greatest"), "not a semantic version"),
    "0.0.9": (manifest("0.0.9", {"1": entry("hostile/x.nwb", version_id=17)}), "must be strings"),
    # each of these used to end in a traceback (exit 1)
    "0.0.10": (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "0.0.11": (manifest("0.0.11").replace(b'"data_pipeline": []', b'"data_pipeline": [' + b"7" * 5000 + b"]"),
               "not valid JSON"),
    "0.0.12": (manifest("0.0.12").replace(b'"project_name": "hostile"',
                                           b'"project_name": "hostile", "project_name": "hostile"'), "appears twice"),
    "0.0.13": (manifest("0.0.13").replace(b'{"url"', b'{"file_hash": "' + b"1" * 128 + b'", "url"', 1),
               "'file_hash' appears twice"),
    "0.0.14": (manifest("0.0.14", {"1": entry("hostile/behavior_sessions/" + "n" * 256 + ".nwb")}),
               "longer than 255 bytes"),
    "0.0.15": (manifest("0.0.15", {"1": entry("hostile/behavior_sessions/" + "é" * 130 + ".nwb")}),
               "longer than 255 bytes"),
    "0.0.16": (b"{\"project_name\": \"\xff\"}", "not UTF-8"),
}


@pytest.fixture(scope="module")
def hostile(sandbox, tmp_path_factory):
    async def upload():
        async with admin_client(sandbox.url) as s3:
            await create_public_bucket(s3, BUCKET)
            for v, (body, _) in CASES.items():
                await s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}manifests/{name(v)}", Body=body)
            # a manifest whose name is no semantic version: ignored by every command, not fatal to them
            await s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}manifests/hostile_manifest_v01.0.0.json", Body=b"{}")
            # a file whose name is 250 bytes long (the limit is 255): mirrored like any other
            r = await s3.put_object(Bucket=BUCKET, Key=LONG_KEY, Body=LONG_BODY)
            doc = json.loads(manifest("0.1.0", {"1": entry(LONG_KEY, version_id=r["VersionId"],
                                                         file_hash=hashlib.blake2b(LONG_BODY).hexdigest())}))
            doc["metadata_files"] = {}
            await s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}manifests/{name('0.1.0')}", Body=json.dumps(doc).encode())

    asyncio.run(upload())
    return write_dataset_config(tmp_path_factory.mktemp("ds") / "hostile.toml", name="hostile", bucket=BUCKET,
                                prefix=PREFIX)


@pytest.mark.parametrize("version", sorted(CASES))
def test_bad_manifest_is_refused_and_nothing_is_written(cli, hostile, version):
    r = cli("--dataset", str(hostile), "manifests", "use", version, expect=2)
    _, problem = CASES[version]
    errors = [line for line in r.stderr.splitlines() if line.startswith("vbo-mirror: error:")]
    assert len(errors) == 1, r.stderr
    assert name(version) in errors[0] and problem in errors[0]
    assert tree_files(cli.cache_dir) == []


def test_bad_manifest_json_error_is_machine_readable(cli, hostile):
    r = cli("--dataset", str(hostile), "manifests", "show", "0.0.5", json_out=True, expect=2)
    err = json.loads(r.stdout)["error"]
    assert err["kind"] == "ManifestError" and "'..' segment" in err["message"]


def test_a_hand_edited_local_manifest_is_validated_too(cli):
    cli("manifests", "use", "1.0.1")
    path = cli.cache_dir / "visual-behavior-ophys_project_manifest_v1.0.1.json"
    doc = json.loads(path.read_bytes())
    first = next(iter(doc["data_files"]))
    doc["data_files"][first]["url"] = doc["data_files"][first]["url"].replace("behavior_sessions/", "../../")
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    r = cli("--offline", "manifests", "show", expect=2)
    assert str(path) in r.stderr and "unsafe key" in r.stderr


def test_unknown_dataset_names_the_known_ones(cli):
    r = cli("--dataset", "nope", "manifests", "list", expect=2)
    assert "unknown dataset 'nope'; known: visual-behavior-neuropixels, visual-behavior-ophys" in r.stderr


def test_a_manifest_name_without_a_semantic_version_is_ignored(cli, hostile):
    listed = cli("--dataset", str(hostile), "manifests", "list", json_out=True, expect=0).data
    assert name("0.1.0") in listed and not any("v01.0.0" in n for n in listed)


def test_a_250_byte_file_name_is_mirrored(cli, hostile):
    cli("--dataset", str(hostile), "sync", "--version", "0.1.0", expect=0)
    view = cli.cache_dir / "hostile-0.1.0" / LONG_KEY.split("/", 1)[1]
    assert len(view.name.encode()) == 250 and view.read_bytes() == LONG_BODY
    assert not [p for p in view.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("pin", ["not utf-8", "directory"])
def test_a_damaged_version_pin_is_a_message(cli, pin):
    cli("manifests", "use", "1.0.1")
    path = cli.cache_dir / "_manifest_last_used.txt"
    path.unlink()
    if pin == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe\x00")
    r = cli("manifests", "show", expect=2)
    errors = [line for line in r.stderr.splitlines() if line.startswith("vbo-mirror: error:")]
    assert len(errors) == 1 and "_manifest_last_used.txt" in errors[0], r.stderr
    assert "manifests use" in r.stderr  # the hint says how to fix it
