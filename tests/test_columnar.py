"""The columnar reading of a big manifest (mirror/columnar.py) against the plain parse: whatever
the columnar path accepts, the plain parse accepts and reads the same; whatever is not in its
shape or breaks a rule, it leaves to the plain parse. No server."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from mirror import manifest as mf
from mirror.columnar import EntryColumns, read_data_files
from mirror.config import load_dataset
from mirror.errors import ManifestError

DS = load_dataset("visual-behavior-ophys")
BUCKET, PREFIX = DS.bucket, DS.prefix
NAME = "visual-behavior-ophys_project_manifest_v1.0.1.json"


def _h(i: int) -> str:
    return hashlib.blake2b(str(i).encode()).hexdigest()


def _url(key: str, region: str = "us-west-2", bucket: str = BUCKET) -> str:
    return f"https://{bucket}.s3.{region}.amazonaws.com/{key}"


def _entry(i: int, order=("url", "version_id", "file_hash")) -> dict:
    e = {"url": _url(f"{PREFIX}behavior_sessions/behavior_session_{800 + i}.nwb"), "version_id": f"v{i}.x-Y_z",
         "file_hash": _h(i)}
    return {k: e[k] for k in order}


def doc(n: int = 12, *, indent=None, separators=None, order=("url", "version_id", "file_hash"),
        data_first: bool = False, mutate=None) -> bytes:
    data = {str(i + 1): _entry(i, order) for i in range(n)}
    meta = {"ophys_session_table": {"url": _url(f"{PREFIX}project_metadata/ophys_session_table.csv"),
                                    "version_id": "m1", "file_hash": _h(-1)}}
    head = {"project_name": "visual-behavior-ophys", "manifest_version": "1.0.1",
            "metadata_file_id_column_name": "file_id", "data_pipeline": [{"name": "AllenSDK", "version": "2.13.4"}]}
    d = {"data_files": data, **head, "metadata_files": meta} if data_first else {**head, "metadata_files": meta,
                                                                                 "data_files": data}
    if mutate:
        mutate(d)
    return json.dumps(d, indent=indent, separators=separators).encode()


def plain(data: bytes):
    try:
        return mf._parse_plain(data, source=NAME, dataset=DS)
    except ManifestError as exc:
        return exc


def columnar(data: bytes):
    return mf._parse_columnar(data, source=NAME, dataset=DS)


def assert_agree(data: bytes) -> bool:
    """Whether the columnar path took `data`; when it did, the plain parse read the same."""
    fast = columnar(data)
    if fast is None:
        return False
    slow = plain(data)
    assert not isinstance(slow, ManifestError), f"columnar accepted what the plain parse refuses: {slow}"
    assert isinstance(fast.data_files, EntryColumns)
    assert fast == slow
    assert list(fast.data_files.items()) == list(slow.data_files.items())  # the same order
    return True


@pytest.mark.parametrize("form", [
    dict(indent=4), dict(), dict(indent=2), dict(indent="\t"), dict(separators=(",", ":")),
    dict(indent=1, separators=(" ,", " : ")), dict(order=("file_hash", "url", "version_id")),
    dict(data_first=True), dict(n=1), dict(n=1, indent=4),
])
def test_manifests_as_json_writes_them_are_read_as_columns_and_agree_with_the_plain_parse(form):
    assert assert_agree(doc(**form))


def _mutations():
    """(name, mutate the document dict) pairs: each breaks one rule or leaves the shape."""
    def entry(i, **kw):
        def f(d):
            d["data_files"][str(i)].update(kw)
        return f

    def key_of(i, key):
        return entry(i, url=_url(key))

    def add(name, value):
        def f(d):
            d["data_files"][name] = value
        return f

    def put(path, value):
        def f(d):
            d[path] = value
        return f

    return [
        ("hash uppercase", entry(3, file_hash=_h(3).upper())),
        ("hash short", entry(3, file_hash=_h(3)[:-1])),
        ("hash not hex", entry(3, file_hash="g" + _h(3)[1:])),
        ("version id with a slash", entry(3, version_id="a/b")),
        ("version id with a space", entry(3, version_id="a b")),
        ("version id with &", entry(3, version_id="a&b")),
        ("version id empty", entry(3, version_id="")),
        ("version id non-ASCII", entry(3, version_id="vé")),
        ("version id control char", entry(3, version_id="a\x01b")),
        ("version id with a quote", entry(3, version_id='a"b')),
        ("version id DEL", entry(3, version_id="a\x7fb")),
        ("key with ..", key_of(3, f"{PREFIX}a/../b.nwb")),
        ("key with .", key_of(3, f"{PREFIX}a/./b.nwb")),
        ("key ending in /", key_of(3, f"{PREFIX}a/")),
        ("key ending in /..", key_of(3, f"{PREFIX}a/..")),
        ("key ending in /.", key_of(3, f"{PREFIX}.")),
        ("key with //", key_of(3, f"{PREFIX}a//b.nwb")),
        ("key outside the prefix", key_of(3, "other-project/a.nwb")),
        ("key is the prefix", key_of(3, PREFIX)),
        ("key with %", key_of(3, f"{PREFIX}a%2e.nwb")),
        ("key with ?", key_of(3, f"{PREFIX}a?b")),
        ("key with a space", key_of(3, f"{PREFIX}a b")),
        ("key with a backslash", key_of(3, f"{PREFIX}a\\b")),
        ("key non-ASCII", key_of(3, f"{PREFIX}é.nwb")),
        ("key segment of 256", key_of(3, f"{PREFIX}{'a' * 256}")),
        ("key of 300 (segments fine)", key_of(3, f"{PREFIX}{'a/' * 145}b")),
        ("another bucket", entry(3, url=_url(f"{PREFIX}x.nwb", bucket="other-bucket"))),
        ("another region", entry(3, url=_url(f"{PREFIX}x.nwb", region="us-east-1"))),
        ("path-style URL", entry(3, url=f"https://s3.us-west-2.amazonaws.com/{BUCKET}/{PREFIX}x.nwb")),
        ("s3:// URL", entry(3, url=f"s3://{BUCKET}/{PREFIX}x.nwb")),
        ("http URL", entry(3, url=_url(f"{PREFIX}x.nwb").replace("https", "http"))),
        ("same key twice, same object", entry(3, url=_url(f"{PREFIX}behavior_sessions/behavior_session_804.nwb"),
                                              version_id="v4.x-Y_z", file_hash=_h(4))),
        ("same key twice, another hash", entry(3, url=_url(f"{PREFIX}behavior_sessions/behavior_session_804.nwb"))),
        ("name not digits", add("12a", _entry(50))),
        ("name with a leading zero", add("01", _entry(51))),
        ("name empty", add("", _entry(52))),
        ("name non-ASCII digits", add("１２", _entry(53))),
        ("a fourth field", entry(3, size=5)),
        ("a field missing", lambda d: d["data_files"]["3"].pop("version_id")),
        ("a number for a string", entry(3, version_id=7)),
        ("null hash", entry(3, file_hash=None)),
        ("an entry that is a list", add("99", ["a"])),
        ("fields in another order in one entry", add("99", _entry(99, ("version_id", "url", "file_hash")))),
        ("data_files empty", put("data_files", {})),
        ("data_files a list", put("data_files", [])),
        ("data_files named in a value", put("project_name", "data_files")),
        ("nested data_files", put("data_pipeline", [{"data_files": {"1": _entry(1)}}])),
        ("metadata shares a data key", lambda d: d["metadata_files"]["ophys_session_table"].update(_entry(2))),
        ("bad project name", put("project_name", "../x")),
        ("version mismatch", put("manifest_version", "1.0.2")),
        ("missing a top-level key", lambda d: d.pop("metadata_file_id_column_name")),
    ]


@pytest.mark.parametrize("name, mutate", _mutations(), ids=[m[0] for m in _mutations()])
@pytest.mark.parametrize("indent", [None, 4])
def test_a_document_the_columnar_path_takes_is_read_the_same_by_the_plain_parse(name, mutate, indent, monkeypatch):
    data = doc(indent=indent, mutate=mutate)
    took = assert_agree(data)
    slow = plain(data)
    monkeypatch.setattr(mf, "COLUMNAR_MIN_BYTES", 0)  # parse_manifest tries the columns first, whatever the size
    if isinstance(slow, ManifestError):
        assert not took
        # The user sees the plain parse's words: parse_manifest goes there when columns decline.
        with pytest.raises(ManifestError) as got:
            mf.parse_manifest(data, source=NAME, dataset=DS)
        assert str(got.value) == str(slow)
    else:  # accepted: by columns or by the plain parse, the same manifest
        assert mf.parse_manifest(data, source=NAME, dataset=DS) == slow


def test_byte_edits_never_make_the_two_paths_disagree():
    """Random single-byte edits (replace, delete, insert) of a small manifest: the columnar path
    either declines or reads what the plain parse reads."""
    base = doc(6)
    rnd = random.Random(1234)
    alphabet = b'"\\{}[],: \n\t\x00\x01\x7f./%?#&azAZ09\xc3\xa9'
    took = 0
    for _ in range(1500):
        data = bytearray(base)
        at = rnd.randrange(len(data))
        op = rnd.randrange(3)
        if op == 0:
            data[at] = rnd.choice(alphabet)
        elif op == 1:
            del data[at]
        else:
            data.insert(at, rnd.choice(alphabet))
        took += assert_agree(bytes(data))
    assert took > 100  # most edits inside a value stay valid: the columnar path was exercised


@pytest.mark.parametrize("key_len", [60, 200, 226, 240])
def test_a_long_key_in_the_last_field_of_the_last_entry_at_the_end_of_the_document(key_len):
    """The reads that fingerprint keys go up to 7 bytes past a key's end: near the end of the
    document they must not fall off it (compact JSON, url last, data_files last)."""
    def long_last_key(d):
        last = d["data_files"][str(len(d["data_files"]))]
        last["url"] = _url(PREFIX + "k/" + "x" * (key_len - len(PREFIX) - 2))

    assert assert_agree(doc(4, order=("version_id", "file_hash", "url"), separators=(",", ":"), mutate=long_last_key))


def test_random_shapes_lengths_and_edits_never_make_the_two_paths_disagree():
    """Field orders, spacings, data_files first or last, keys of 20 to 300 characters, short
    and long version ids, then zero to two byte edits: declined, or read as the plain parse reads."""
    rnd = random.Random(99)
    orders = [("url", "version_id", "file_hash"), ("version_id", "file_hash", "url"),
              ("file_hash", "url", "version_id"), ("version_id", "url", "file_hash")]
    took = 0
    for _ in range(600):
        k = rnd.randrange(1, 6)
        lengths = [rnd.choice([20, 60, 120, 200, 226, 240, 255, 256, 300]) for _ in range(k)]
        vid = "v" * rnd.choice([1, 5, 12, 13, 32, 200]) if rnd.random() < 0.3 else None

        def mutate(d, lengths=lengths, vid=vid):
            for i, n in enumerate(lengths):
                d["data_files"][str(i + 1)]["url"] = _url(PREFIX + "k/" + "x" * max(1, n - len(PREFIX) - 2) + str(i))
            if vid:
                d["data_files"][str(len(lengths))]["version_id"] = vid

        data = bytearray(doc(k, order=rnd.choice(orders), separators=rnd.choice([None, (",", ":"), (", ", ": ")]),
                             indent=rnd.choice([None, None, 2]), data_first=rnd.random() < 0.3, mutate=mutate))
        for _ in range(rnd.choice([0, 0, 1, 2])):
            at, c = rnd.randrange(len(data)), rnd.choice(b'"\\{}[],: \n/.x0a\x00\x7f')
            op = rnd.randrange(3)
            if op == 0:
                data[at] = c
            elif op == 1:
                del data[at]
            else:
                data.insert(at, c)
        took += assert_agree(bytes(data))
    assert took > 100


def test_hand_written_json_that_is_not_in_the_shape_goes_the_plain_way():
    base = doc(3, indent=4).decode()
    escaped = base.replace('"version_id": "v1.x-Y_z"', '"version_id": "v1.x-Y\\u005fz"')  # same value, escaped
    assert escaped != base and columnar(escaped.encode()) is None
    assert plain(escaped.encode()) == plain(base.encode())
    uneven = base.replace('"file_hash": "' + _h(1), '"file_hash":   "' + _h(1))  # one entry spaced otherwise
    assert uneven != base and columnar(uneven.encode()) is None and not isinstance(plain(uneven.encode()), Exception)


def test_read_data_files_gives_the_rest_of_the_document_with_data_files_emptied():
    data = doc(3, indent=4)
    rest, cols = read_data_files(data, bucket=BUCKET, prefix=PREFIX, url=mf._FAST_URL, entry=mf.FileEntry)
    assert json.loads(rest) == {**json.loads(data), "data_files": {}}
    assert len(cols) == 3 and cols.url_prefix == _url("")


def test_entry_columns_behave_as_the_mapping_they_replace():
    m = columnar(doc(5))
    d = m.data_files
    assert list(d) == ["1", "2", "3", "4", "5"] and len(d) == 5
    assert d["3"] == mf.FileEntry("data", "3", _url(f"{PREFIX}behavior_sessions/behavior_session_802.nwb"), BUCKET,
                                  f"{PREFIX}behavior_sessions/behavior_session_802.nwb", "v2.x-Y_z", _h(2))
    assert d.get("9") is None and "3" in d and "9" not in d and 3 not in d
    with pytest.raises(KeyError):
        d["9"]
    assert [e.name for e in d.values()] == list(d) and dict(d.items()) == dict(plain(doc(5)).data_files)
    assert d.entry(0) == d["1"] and list(d.entries(1, 3)) == [d["2"], d["3"]]
    # what code does with a dict: the mapping's own keys(), dict(), ** (its S3 keys are `object_keys`)
    assert list(d.keys()) == list(d) and dict(d) == {**d} == dict(plain(doc(5)).data_files)


def test_parse_manifest_reads_big_documents_as_columns(monkeypatch):
    data = doc(20, indent=4)
    assert not isinstance(mf.parse_manifest(data, source=NAME, dataset=DS).data_files, EntryColumns)  # small: plain
    monkeypatch.setattr(mf, "COLUMNAR_MIN_BYTES", 0)
    m = mf.parse_manifest(data, source=NAME, dataset=DS)
    assert isinstance(m.data_files, EntryColumns) and m == plain(data)
