"""Listings through our own requests and parser: every page walked, keys that XML cannot
carry raw come back exact, and what a page says is checked."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from conftest import write_dataset_config
from faultproxy import FaultProxy

from mirror.api import Mirror
from mirror.errors import ProtocolError
from mirror.remote import listing
from mirror.remote.client import Remote


def test_every_page_of_both_listings_is_walked(sandbox, replica, tmp_path, monkeypatch):
    m = Mirror(tmp_path / "one", endpoint_url=sandbox.url)
    whole = m.plan("1.1.0").to_dict()
    monkeypatch.setattr(Remote, "LIST_PAGE_SIZE", 7)
    with FaultProxy(sandbox.url) as proxy:
        m = Mirror(tmp_path / "paged", endpoint_url=proxy.url)
        paged = m.plan("1.1.0").to_dict()
        lists = [p for p, _ in proxy.gets("/visual-behavior-ophys-data")
                 if "list-type=2" in p or "versions=" in p]
    assert paged["fetch_items"] == whole["fetch_items"] and paged["fetch"]["unknown_sizes"] == 0
    assert sum("versions=" in p for p in lists) > 5 and any("key-marker=" in p for p in lists)
    assert all("max-keys=7" in p for p in lists)


def test_keys_with_characters_xml_and_urls_mangle_are_listed_exactly(cli, sandbox, tmp_path):
    from mirror.sandbox.server import admin_client, create_public_bucket

    bucket, prefix = "odd-ophys-data", "odd/"
    names = ["b 1.nwb", "b+2.nwb", "b%3.nwb", "b&<4>.nwb", "b\u00e9\u4e2d5.nwb"]
    bodies = {f"{prefix}behavior_sessions/{n}": hashlib.sha256(n.encode()).digest() * (100 + i)
              for i, n in enumerate(names)}

    async def upload():
        from urllib.parse import quote

        async with admin_client(sandbox.url) as s3:
            await create_public_bucket(s3, bucket)
            entries = {}
            for i, (key, body) in enumerate(bodies.items()):
                vid = (await s3.put_object(Bucket=bucket, Key=key, Body=body))["VersionId"]
                entries[str(i + 1)] = {"url": f"https://{bucket}.s3.us-west-2.amazonaws.com/{quote(key)}",
                                       "version_id": vid, "file_hash": hashlib.blake2b(body).hexdigest()}
            doc = {"project_name": "odd", "manifest_version": "1.0.0", "metadata_file_id_column_name": "file_id",
                   "data_pipeline": [], "metadata_files": {}, "data_files": entries}
            await s3.put_object(Bucket=bucket, Key=f"{prefix}manifests/odd_manifest_v1.0.0.json",
                                Body=json.dumps(doc).encode())

    asyncio.run(upload())
    cfg = write_dataset_config(tmp_path / "odd.toml", name="odd", bucket=bucket, prefix=prefix)
    plan = cli("--dataset", str(cfg), "plan", "--version", "1.0.0", json_out=True).data
    assert plan["fetch"]["unknown_sizes"] == 0  # every key was found in the listing
    assert {i["ref"]["key"]: i["size"] for i in plan["fetch_items"]} == {k: len(b) for k, b in bodies.items()}
    cli("--dataset", str(cfg), "sync", "--version", "1.0.0")
    for key, body in bodies.items():
        assert (cli.cache_dir / "odd-1.0.0" / key.split("/", 1)[1]).read_bytes() == body


def test_listing_pages_are_checked():
    ns = "http://s3.amazonaws.com/doc/2006-03-01/"
    good = (f'<ListVersionsResult xmlns="{ns}"><IsTruncated>true</IsTruncated><EncodingType>url</EncodingType>'
            "<NextKeyMarker>a%20b</NextKeyMarker><NextVersionIdMarker>v2</NextVersionIdMarker>"
            "<Version><Key>a%20b</Key><VersionId>v1</VersionId><ETag>&quot;abc-2&quot;</ETag><Size>5</Size></Version>"
            "<DeleteMarker><Key>gone</Key><VersionId>d</VersionId></DeleteMarker></ListVersionsResult>").encode()
    page = listing.parse(good, what="t")
    assert [(o.key, o.version_id, o.size, o.etag) for o in page.objects] == [("a b", "v1", 5, "abc-2")]
    assert page.truncated and page.next_key == "a b" and page.next_version_id == "v2"
    for bad in (b"<html>not xml", b"<Error><Code>AccessDenied</Code></Error>",
                good.replace(b"<Size>5</Size>", b"<Size>five</Size>"),
                good.replace(b"<Key>a%20b</Key>", b"")):
        with pytest.raises(ProtocolError):
            listing.parse(bad, what="t")


def test_encoded_keys_decode_as_botocore_decodes_them():
    """A space as `+` (SeaweedFS's ListObjectsV2) or `%20`; a literal `+` only as `%2B`."""
    doc = ('<ListBucketResult><IsTruncated>false</IsTruncated><EncodingType>url</EncodingType>'
           "<Contents><Key>enc/a+b%2Bc%25d%26e.txt</Key><Size>1</Size><ETag>x</ETag></Contents>"
           "<Contents><Key>enc/a%20b</Key><Size>1</Size><ETag>x</ETag></Contents></ListBucketResult>").encode()
    assert [o.key for o in listing.parse(doc, what="t").objects] == ["enc/a b+c%d&e.txt", "enc/a b"]
    raw = doc.replace(b"<EncodingType>url</EncodingType>", b"")  # not encoded (SeaweedFS's versions listing)
    assert [o.key for o in listing.parse(raw, what="t").objects][0] == "enc/a+b%2Bc%25d%26e.txt"


def test_an_explicit_version_is_fetched_by_name_without_listing_the_manifests(sandbox, replica, tmp_path, cli):
    with FaultProxy(sandbox.url) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        plan = m.plan("1.0.1")
        manifest_lists = [p for p, _ in proxy.gets() if "list-type=2" in p]
        manifest_gets = [p for p, _ in proxy.gets("/manifests/")]
    assert manifest_lists == [] and len(manifest_gets) == 1
    assert plan.manifests == ("visual-behavior-ophys_project_manifest_v1.0.1.json",)
    # a version the bucket lacks still gets the list of those it has
    r = cli("plan", "--version", "9.9.9", expect=2)
    assert "unknown dataset version" in r.stderr and "1.0.1" in r.stderr
