"""The manifest model: validation of untrusted manifests, safe keys, and the comparison, against
expectations written by hand for a small pair of manifests."""

from __future__ import annotations

import json

import pytest

from mirror.config import load_dataset
from mirror.errors import ManifestError
from mirror.manifest import check_key, compare_manifests, format_diff, parse_manifest, parse_s3_url
from mirror.semver import Version

DS = load_dataset("visual-behavior-ophys")
HOST = "https://visual-behavior-ophys-data.s3.us-west-2.amazonaws.com"


def h(c: str) -> str:
    return c * 128


def entry(path: str, content: str, vid: str = "v1") -> dict:
    return {"url": f"{HOST}/visual-behavior-ophys/{path}", "version_id": vid, "file_hash": h(content)}


def doc(version: str, metadata: dict, data: dict) -> dict:
    return {"project_name": "visual-behavior-ophys", "manifest_version": version,
            "metadata_file_id_column_name": "file_id",
            "data_pipeline": [{"name": "AllenSDK", "version": "2.16.2", "comment": "x"}],
            "metadata_files": metadata, "data_files": data}


def parse(d: dict | bytes, version: str = "1.0.0"):
    raw = d if isinstance(d, bytes) else json.dumps(d).encode()
    return parse_manifest(raw, source=f"visual-behavior-ophys_project_manifest_v{version}.json", dataset=DS)


A = doc("1.0.0", {
    "behavior_session_table": entry("project_metadata/behavior_session_table.csv", "a"),
    "ophys_session_table": entry("project_metadata/ophys_session_table.csv", "b"),
    "old_table": entry("project_metadata/old_table.csv", "c"),
}, {
    "1": entry("behavior_sessions/behavior_session_1.nwb", "1"),
    "2": entry("behavior_sessions/behavior_session_2.nwb", "2"),
    "3": entry("behavior_ophys_experiments/behavior_ophys_experiment_3.nwb", "3"),
    "4": entry("behavior_ophys_experiments/behavior_ophys_experiment_4.nwb", "4"),
})
B = doc("1.0.1", {
    "behavior_session_table": entry("project_metadata/behavior_session_table.csv", "d"),  # changed
    "ophys_session_table": entry("project_metadata/ophys_session_table.csv", "b"),  # same
    "new_table": entry("project_metadata/new_table.csv", "c"),  # old_table renamed
}, {
    "1": entry("behavior_sessions/behavior_session_1.nwb", "1"),  # same
    "2": entry("behavior_sessions/behavior_session_2.nwb", "e"),  # changed
    "5": entry("behavior_ophys_experiments/behavior_ophys_experiment_5.nwb", "3"),  # 3 renamed to 5
    "6": entry("behavior_sessions/behavior_session_6.nwb", "f"),  # created
    "7": entry("behavior_sessions/behavior_session_7.nwb", "1"),  # a copy of 1: not reported
})  # 4 deleted

EXPECTED = """Changes going from
visual-behavior-ophys_project_manifest_v1.0.0.json
to
visual-behavior-ophys_project_manifest_v1.0.1.json

project_metadata/behavior_session_table.csv changed
project_metadata/old_table.csv renamed project_metadata/new_table.csv
behavior_ophys_experiments/behavior_ophys_experiment_3.nwb renamed behavior_ophys_experiments/behavior_ophys_experiment_5.nwb
behavior_ophys_experiments/behavior_ophys_experiment_4.nwb deleted
behavior_sessions/behavior_session_2.nwb changed
behavior_sessions/behavior_session_6.nwb created
"""


def test_compare_prints_allensdk_message_for_a_hand_checked_pair():
    diff = compare_manifests(parse(A, "1.0.0"), parse(B, "1.0.1"))
    assert format_diff(diff) == EXPECTED


def test_compare_structured_changes():
    diff = compare_manifests(parse(A, "1.0.0"), parse(B, "1.0.1"))
    got = sorted((c.kind, c.change, c.path, c.old_path) for c in diff.changes)
    assert got == sorted([
        ("metadata", "changed", "project_metadata/behavior_session_table.csv", None),
        ("metadata", "renamed", "project_metadata/new_table.csv", "project_metadata/old_table.csv"),
        ("data", "changed", "behavior_sessions/behavior_session_2.nwb", None),
        ("data", "renamed", "behavior_ophys_experiments/behavior_ophys_experiment_5.nwb",
         "behavior_ophys_experiments/behavior_ophys_experiment_3.nwb"),
        ("data", "deleted", "behavior_ophys_experiments/behavior_ophys_experiment_4.nwb", None),
        ("data", "created", "behavior_sessions/behavior_session_6.nwb", None),
    ])


def test_compare_equal_manifests():
    a = parse(A, "1.0.0")
    assert format_diff(compare_manifests(a, a)) == "The two manifests are equivalent"


def test_valid_manifest_model():
    m = parse(A, "1.0.0")
    assert m.view_dir == "visual-behavior-ophys-1.0.0"
    assert len(m) == 7
    e = m.data_files["3"]
    assert (e.bucket, e.key) == ("visual-behavior-ophys-data",
                                 "visual-behavior-ophys/behavior_ophys_experiments/behavior_ophys_experiment_3.nwb")
    assert e.relative_path == "behavior_ophys_experiments/behavior_ophys_experiment_3.nwb"


def _with(**changes) -> dict:
    d = json.loads(json.dumps(A))
    for k, v in changes.items():
        d[k] = v
    return d


def _with_data_entry(**fields) -> dict:
    d = json.loads(json.dumps(A))
    d["data_files"]["1"].update(fields)
    return d


@pytest.mark.parametrize("raw, problem", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "top level is not a JSON object"),
    ({k: v for k, v in A.items() if k != "data_files"}, "missing required key 'data_files'"),
    (_with(manifest_version="one"), "is not a semantic version"),
    (_with(manifest_version="1.0.1"), "does not match the version in the file name"),
    (_with(project_name="../etc"), "is not a safe directory name"),
    (_with_data_entry(file_hash="abc"), "file_hash is not 128 lowercase hex"),
    (_with_data_entry(file_hash="G" * 128), "file_hash is not 128 lowercase hex"),
    (_with_data_entry(url="https://evil-bucket.s3.us-west-2.amazonaws.com/visual-behavior-ophys/x.nwb"),
     "outside the dataset bucket"),
    (_with_data_entry(url=f"{HOST}/other-prefix/x.nwb"), "outside the dataset prefix"),
    (_with_data_entry(url=f"{HOST}/visual-behavior-ophys/../../etc/passwd"), "'..' segment"),
    (_with_data_entry(url=f"{HOST}/visual-behavior-ophys/%2E%2E/%2E%2E/etc/passwd"), "'..' segment"),
    (_with_data_entry(url=f"{HOST}//etc/passwd"), "absolute path"),
    (_with_data_entry(url="https://example.com/visual-behavior-ophys/x.nwb"), "not an AWS S3 URL"),
    (_with_data_entry(url="file:///etc/passwd"), "not an S3 URL"),
    (_with_data_entry(version_id="a/../b"), "not a valid S3 version id"),
    (_with_data_entry(extra="x"), "must have exactly url, version_id, file_hash"),
])
def test_bad_manifests_are_rejected_with_the_file_and_problem(raw, problem):
    with pytest.raises(ManifestError) as info:
        parse(raw, "1.0.0")
    msg = str(info.value)
    assert msg.startswith("visual-behavior-ophys_project_manifest_v1.0.0.json: ")
    assert problem in msg
    assert "\n" not in msg


def test_check_key():
    p = "visual-behavior-ophys/"
    assert check_key("visual-behavior-ophys/behavior_sessions/x.nwb", prefix=p) is None
    assert "absolute" in check_key("/visual-behavior-ophys/x", prefix=p)
    assert ".." in check_key("visual-behavior-ophys/a/../../x", prefix=p)
    assert "NUL" in check_key("visual-behavior-ophys/a\x00b", prefix=p)
    assert "outside" in check_key("other/x", prefix=p)


def test_parse_s3_url_forms():
    key = "visual-behavior-ophys/behavior_sessions/behavior_session_870987812.nwb"
    for url in (f"https://visual-behavior-ophys-data.s3.us-west-2.amazonaws.com/{key}",
                f"https://visual-behavior-ophys-data.s3-us-west-2.amazonaws.com/{key}",
                f"https://s3.us-west-2.amazonaws.com/visual-behavior-ophys-data/{key}",
                f"s3://visual-behavior-ophys-data/{key}"):
        assert parse_s3_url(url) == ("visual-behavior-ophys-data", key)


def test_semver_orders_numerically_not_as_text():
    names = ["0.9.0", "0.10.0", "1.0.0-rc.1", "1.0.0", "0.2.0"]
    assert [str(v) for v in sorted(map(Version, names))] == ["0.2.0", "0.9.0", "0.10.0", "1.0.0-rc.1", "1.0.0"]
    assert not Version.is_valid("1.0")
    assert not Version.is_valid("01.0.0")


def test_the_fast_entry_path_accepts_exactly_what_the_checked_path_accepts():
    """Random entries near the edges (odd hosts, escapes, dot segments, control characters,
    long keys, bad hashes and versions): wherever the fast path returns an entry, the
    checked path returns the same one; wherever the checked path refuses, so does the whole."""
    import random

    from mirror.errors import ManifestError
    from mirror.manifest import _entry, _entry_checked, _key_pattern

    ds = load_dataset("visual-behavior-ophys")
    key_ok = _key_pattern(ds.prefix)
    rng = random.Random(11)
    hosts = ["visual-behavior-ophys-data.s3.us-west-2.amazonaws.com", "visual-behavior-ophys-data.s3-us-west-2.amazonaws.com",
             "visual-behavior-ophys-data.s3.amazonaws.com", "other-bucket.s3.us-west-2.amazonaws.com",
             "VISUAL-behavior-ophys-data.s3.us-west-2.amazonaws.com", "s3.us-west-2.amazonaws.com",
             "visual-behavior-ophys-data.s3.us-west-2.amazonaws.com:443", "evil.com"]
    pieces = ["visual-behavior-ophys", "behavior_sessions", "a.nwb", "", ".", "..", "...", "%2e%2e", "%20x", "a b",
              "x\ny", "x\tz", "\x00", "\\", "?q=1", "#f", "é", "+", "~", "a" * 300, "/"]
    schemes = ["https://", "http://", "s3://", "HTTPS://", " https://"]
    accepted = refused = 0
    for _ in range(6000):
        key = "/".join(rng.choice(pieces) if rng.random() < 0.3 else rng.choice(["b", "c.nwb", "d_1"])
                       for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.6:
            key = "visual-behavior-ophys/" + key
        scheme = schemes[0] if rng.random() < 0.7 else rng.choice(schemes)
        host = hosts[0] if rng.random() < 0.6 else rng.choice(hosts)
        url = scheme + host + "/" + key if rng.random() < 0.95 else key
        h = rng.choice(["ab" * 64] * 8 + ["AB" * 64, "ab" * 63, "ab" * 64 + "\n", "g" * 128])
        v = rng.choice(["abc123"] * 8 + ["", "a/b", "a b", "x" * 1025, "v\n", "null"])
        raw = {"url": url, "version_id": v, "file_hash": h}
        try:
            want = _entry_checked("s", "data", "1", raw, ds)
        except ManifestError:
            want = None
        try:
            got = _entry("s", "data", "1", raw, ds, key_ok)
        except ManifestError:
            got = None
        assert got == want, (raw, got, want)
        accepted += want is not None
        refused += want is None
    assert accepted > 200 and refused > 2000  # both sides of the line were exercised


def test_a_hash_with_a_trailing_newline_is_refused():
    with pytest.raises(ManifestError, match="file_hash"):
        parse(_with_data_entry(file_hash="ab" * 64 + "\n"))
