"""`adopt_tree`: a cache_dir that AllenSDK filled (files, and ABSOLUTE symlinks from a newer
version's identical files to an older one's) taken into the store in place, with real bytes.
No AllenSDK is needed: the trees are built the way its cloud cache builds them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Cli, manifest_name
from test_sync import PROJECT, assert_mirror, expected_files

from mirror.reports import AdoptReport
from mirror.upkeep.adopt import adopt_tree
from mirror.catalog import Catalog
from mirror.config import load_dataset
from mirror.store.facade import Store
from mirror.store.index import StateIndex
from mirror.store.layout import CacheLayout
from mirror.store.lock import CacheLock

V0, V1 = "1.0.0", "1.0.1"
D0, D1 = f"{PROJECT}-{V0}", f"{PROJECT}-{V1}"


def _b2(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()


def build_allensdk_tree(root: Path, replica) -> dict:
    """What AllenSDK's S3CloudCache leaves after downloading V0 and then V1: manifests at the
    top, `_manifest_last_used.txt`, V0's files, V1's new files, and for V1's files identical to
    a V0 file an absolute symlink to it; `_downloaded_data.json` maps each real file's resolved
    path to its hash. Returns {view path: bytes} for both versions."""
    root.mkdir(parents=True)
    for v in (V0, V1):
        (root / manifest_name(v)).write_bytes(replica.manifests[manifest_name(v)])
    (root / "_manifest_last_used.txt").write_text(manifest_name(V1))
    record, have, files = {}, {}, {}
    for v in (V0, V1):
        for rel, body in sorted(expected_files(replica, v).items()):
            files[rel] = body
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if body in have:
                path.symlink_to(have[body].resolve())  # AllenSDK: symlink_to(matched_path.resolve())
                continue
            path.write_bytes(body)
            os.chmod(path, 0o644)
            have[body] = path
            record[str(path.resolve())] = _b2(body)
    (root / "_downloaded_data.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return files


def _nwbs(files: dict, version_dir: str) -> list[str]:
    return sorted(r for r in files if r.startswith(version_dir + "/") and r.endswith(".nwb"))


def snapshot(top: Path, *, skip: Path | None = None) -> dict:
    """Everything under `top` (without following symlinks): kind, mode, inode, link text, bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if skip is not None and p == skip:
                continue
            st = os.lstat(p)
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_ino, st.st_nlink, _b2(p.read_bytes()))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def open_cache(root: Path, link_mode: str = "hardlink"):
    layout = CacheLayout(root)
    ds = load_dataset("visual-behavior-ophys")
    cat = Catalog(ds, layout, None)
    manifests = [cat.read_local(n) for n in cat.local_names()]
    return layout, Store(layout, link_mode=link_mode), manifests


def adopt(root: Path, **kw) -> AdoptReport:
    layout, store, manifests = open_cache(root)
    with CacheLock(layout.lock_path, command="test adopt"):
        return adopt_tree(layout, store, manifests, **kw)


def hashes_of(root: Path) -> dict[str, str]:
    _, _, manifests = open_cache(root)
    return {f"{m.view_dir}/{e.relative_path}": e.file_hash for m in manifests for e in m.entries()}


def examples(report: AdoptReport, category: str) -> list:
    return report.tally(category).examples


def assert_view_of_object(root: Path, rel: str, file_hash: str, body: bytes) -> None:
    path = root / rel
    obj = CacheLayout(root).object_path(file_hash)
    st, so = os.lstat(path), os.lstat(obj)
    assert stat.S_ISREG(st.st_mode), rel
    assert (st.st_dev, st.st_ino) == (so.st_dev, so.st_ino), rel
    assert stat.S_IMODE(so.st_mode) == 0o444
    assert path.read_bytes() == body and _b2(obj.read_bytes()) == file_hash


def test_adopt_an_allensdk_tree_in_place(sandbox, replica, tmp_path):
    root = tmp_path / "cache"
    files = build_allensdk_tree(root, replica)
    want = hashes_of(root)
    n0, n1 = _nwbs(files, D0), _nwbs(files, D1)
    def name(rel: str) -> str:
        return rel.split("/", 1)[1]

    links = [r for r in n1 if (root / r).is_symlink()]
    assert len(links) == len(n1) >= 8  # V1 kept every NWB of V0: all symlinks, as AllenSDK makes them
    all_links = [r for r in files if (root / r).is_symlink()]  # a table or two unchanged in V1 as well

    # The damage a real AllenSDK cache collects.
    gone = links[0]  # the file a symlink points at was deleted: V0's path absent, V1's symlink broken
    (root / D0 / name(gone)).unlink()
    wrong = links[1]  # a V0 file with wrong bytes (and V1's symlink to it)
    (root / D0 / name(wrong)).write_bytes(b"\x89HDF\r\n\x1a\n not the file")
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    foreign = links[2]  # a symlink out of cache_dir, to a file whose bytes happen to match
    shutil.copyfile(root / D0 / name(foreign), outside_dir / "copy.nwb")
    (root / foreign).unlink()
    (root / foreign).symlink_to(outside_dir / "copy.nwb")
    passwd = links[3]
    (root / passwd).unlink()
    (root / passwd).symlink_to("/etc/passwd")
    relative = links[4]  # a relative symlink that stays inside
    (root / relative).unlink()
    (root / relative).symlink_to(os.path.relpath(root / D0 / name(relative), (root / relative).parent))
    dup = links[5]  # a second copy of V0's bytes (not a symlink): stored once after adopting
    (root / dup).unlink()
    shutil.copyfile(root / D0 / name(dup), root / dup)
    tables1 = sorted(r for r in files if r.startswith(f"{D1}/project_metadata/"))
    absent = tables1[0]  # never downloaded
    (root / absent).unlink()

    # each inode is hashed once: V0's files (the wrong one too), V1's own files, the duplicate
    inodes = {r for r in files if r.startswith(D0) and (root / r).exists()}
    inodes |= {r for r in files if r.startswith(D1) and (root / r).exists() and not (root / r).is_symlink()}
    hashed = sum((root / r).stat().st_size for r in inodes)

    record_before = json.loads((root / "_downloaded_data.json").read_text())
    top_before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != "_downloaded_data.json"}
    outside_before = snapshot(tmp_path, skip=root)

    # A dry run hashes and reports; it changes nothing at all.
    tree_before = snapshot(root)
    dry = adopt(root, dry_run=True)
    assert snapshot(root, skip=root / ".vbo-mirror") == tree_before
    assert not (root / ".vbo-mirror" / "objects-v1").exists()
    assert dry.dry_run is True

    progress = []
    rep = adopt(root, jobs=2, on_progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (len(files), len(files)) and all(t == len(files) for _, t in progress)
    for key in ("adopted", "present", "mismatch", "missing", "foreign", "symlinks", "rerooted", "hashed_bytes"):
        assert getattr(dry, key) == getattr(rep, key) or key in ("present",), key  # the dry run said what would happen

    # What was reported, exactly.
    mismatched = {wrong, f"{D0}/{name(wrong)}"}
    missing = {gone, f"{D0}/{name(gone)}", absent}
    foreigners = {foreign, passwd}
    adopted = set(files) - mismatched - missing - foreigners
    assert {x["path"] for x in examples(rep, "mismatch")} == mismatched
    assert all(x["expected"] == want[x["path"]] and x["got"] == _b2((root / D0 / name(wrong)).read_bytes())
               for x in examples(rep, "mismatch"))
    assert {x["path"] for x in examples(rep, "missing")} == missing
    assert {x["path"] for x in examples(rep, "foreign")} == foreigners
    assert rep.foreign.files == 2 and rep.missing.files == 3 and rep.mismatch.files == 2
    assert rep.adopted.files == len(adopted) and rep.present.files == 0 and rep.failed.files == 0
    assert rep.adopted.bytes == sum(len(files[r]) for r in adopted)
    adopted_links = (set(all_links) - {dup}) & adopted
    assert rep.symlinks.to_dict() == {"files": len(adopted_links), "bytes": sum(len(files[r]) for r in adopted_links)}
    assert rep.rerooted.files == 0
    assert rep.duplicates_freed.to_dict() == {"files": 1, "bytes": len(files[dup])}
    assert rep.copied.files == 0  # every object is the downloaded file itself, hard-linked
    distinct = {want[r] for r in adopted}
    assert rep.objects_added.files == len(distinct)
    assert rep.stored_bytes == sum(len(files[next(r for r in adopted if want[r] == h)]) for h in distinct)
    assert rep.logical_bytes == rep.adopted.bytes > rep.stored_bytes
    assert rep.hashed_bytes == hashed

    # Real bytes: every adopted path is a hard link of its verified object, symlinks included.
    for rel in adopted:
        assert_view_of_object(root, rel, want[rel], files[rel])
    obj = CacheLayout(root).object_path(want[n0[-1]])
    assert os.lstat(obj).st_nlink == 3  # the store, V0's path, V1's former symlink
    # The rest is left exactly as it was.
    assert (root / D0 / name(wrong)).read_bytes().endswith(b"not the file")
    assert stat.S_IMODE(os.lstat(root / D0 / name(wrong)).st_mode) == 0o644  # not even made read-only
    for rel in (wrong, gone, foreign, passwd):
        assert (root / rel).is_symlink()
    assert not (root / absent).exists()
    assert snapshot(tmp_path, skip=root) == outside_before  # nothing outside cache_dir touched
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != "_downloaded_data.json"} \
        == top_before  # manifests and _manifest_last_used.txt untouched
    assert not list(CacheLayout(root).objects.rglob(".vbo-tmp-*")) and not list(root.rglob(".vbo-link-*"))

    # AllenSDK's record keeps every entry it had and names each adopted path with its hash.
    record = json.loads((root / "_downloaded_data.json").read_text())
    assert all(record[p] == h for p, h in record_before.items())
    real = os.path.realpath(root)
    for rel in adopted:
        assert record[os.path.join(real, rel)] == want[rel] == _b2(Path(real, rel).read_bytes())

    # The state index knows every object, with its fingerprint.
    index = StateIndex(CacheLayout(root))
    assert index.load()
    assert set(index.records) == distinct
    assert all(r.xxh3 and r.key and r.version_id and r.etag is None for r in index.records.values())

    # A second adopt finds everything in place and hashes only what still does not match.
    again = adopt(root)
    assert again.present.files == len(adopted) and again.adopted.files == 0
    assert again.objects_added.files == 0
    assert again.hashed_bytes == (root / D0 / name(wrong)).stat().st_size
    assert {x["path"] for x in examples(again, "mismatch")} == mismatched

    # verify (offline): the store is sound; the views adopt could not make are the wrong ones:
    # the mismatch, the broken symlink and the two foreign symlinks. Files AllenSDK never
    # downloaded are not expected (exit 5 for the wrong views, nothing else).
    cli = Cli(sandbox.url, root)
    r = cli("--offline", "--json", "verify", expect=5)
    v = json.loads(r.stdout)
    assert v["corrupt"] == [] and v["views_missing"] == [] and v["views_missing_content"] == []
    assert set(v["views_wrong"]) == mismatched | {gone} | foreigners
    assert v["objects"] == len(distinct)

    # A sync of V1 fetches only what adopt could not take in: the deleted file, the wrong one,
    # the table never downloaded (unless V0 had the same bytes). The foreign symlinks are
    # relinked from the store.
    s = json.loads(cli("--json", "sync", "--version", V1).stdout.splitlines()[-1])
    need = {want[r]: len(files[r]) for r in (gone, wrong, absent) if want[r] not in distinct}
    assert {want[gone], want[wrong]} <= set(need)
    assert s["failures"] == [] and s["bytes_fetched"] == sum(need.values()) and s["files_fetched"] == len(need)
    assert_mirror(root, replica, V1)
    for rel in links:
        assert_view_of_object(root, rel, want[rel], files[rel])
    assert (outside_dir / "copy.nwb").read_bytes() == files[foreign]  # still not touched
    s = json.loads(cli("--json", "sync", "--version", V0).stdout.splitlines()[-1])
    assert s["bytes_fetched"] == 0  # the rest of V0 is in the store now
    assert cli("--offline", "verify").stdout.strip().endswith("ok")


def test_a_moved_tree_is_adopted_through_its_old_symlinks(sandbox, replica, tmp_path):
    """AllenSDK's absolute symlinks name the old place once a cache is moved: found again
    under the new cache_dir by their <project>-<version>/... part (re-rooted)."""
    old = tmp_path / "old"
    files = build_allensdk_tree(old, replica)
    links = [r for r in files if (old / r).is_symlink()]
    root = tmp_path / "moved" / "here"
    root.parent.mkdir()
    os.rename(old, root)
    assert all(not (root / r).exists() for r in links)  # every symlink is broken now
    rep = adopt(root)
    assert rep.adopted.files == len(files) and rep.missing.files == 0
    assert rep.rerooted.files == len(links) == rep.symlinks.files
    want = hashes_of(root)
    for rel, body in files.items():
        assert_view_of_object(root, rel, want[rel], body)
    cli = Cli(sandbox.url, root)
    assert cli("--offline", "verify").stdout.strip().endswith("ok")


def test_a_copied_tree_never_reads_the_original(replica, tmp_path):
    """A copy (cp -a) whose symlinks still point into the original: the original is outside
    cache_dir, so the copy's own files are used, and the original is not touched."""
    orig = tmp_path / "orig"
    files = build_allensdk_tree(orig, replica)
    links = [r for r in _nwbs(files, D1) if (orig / r).is_symlink()]
    all_links = [r for r in files if (orig / r).is_symlink()]
    root = tmp_path / "copy"
    shutil.copytree(orig, root, symlinks=True)
    # Damage one original: were it read through the symlink, V1's path would be a mismatch.
    victim = orig / D0 / links[0].split("/", 1)[1]
    victim.write_bytes(b"changed in the original")
    before = snapshot(orig)
    rep = adopt(root)
    assert snapshot(orig) == before
    assert rep.adopted.files == len(files) and rep.mismatch.files == 0
    assert rep.rerooted.files == len(all_links)
    want = hashes_of(root)
    for rel, body in files.items():
        assert_view_of_object(root, rel, want[rel], body)


def test_hostile_entries_are_not_followed(replica, tmp_path):
    """A FIFO, a symlink to a directory, a symlink loop, a symlink to a manifest (inside
    cache_dir, not in a version directory), a symlinked subdirectory: reported as foreign,
    never opened for reading, never changed."""
    root = tmp_path / "cache"
    files = build_allensdk_tree(root, replica)
    n1 = _nwbs(files, D1)
    odd = n1[:4]  # in behavior_ophys_experiments/
    (root / odd[0]).unlink()
    os.mkfifo(root / odd[0])
    (root / odd[1]).unlink()
    (root / odd[1]).symlink_to(root / D0)
    (root / odd[2]).unlink()
    (root / odd[2]).symlink_to(root / odd[2])  # a loop
    (root / odd[3]).unlink()
    (root / odd[3]).symlink_to(root / manifest_name(V0))
    sub = (root / n1[-1]).parent  # behavior_sessions/ of V1: a symlink to a directory outside
    assert sub != (root / odd[0]).parent
    outside = tmp_path / "outside"
    shutil.copytree(sub, outside, symlinks=True)
    moved = {r for r in files if r.startswith(str(sub.relative_to(root)) + "/")}
    shutil.rmtree(sub)
    sub.symlink_to(outside, target_is_directory=True)
    before, manifest = snapshot(outside), (root / manifest_name(V0)).read_bytes()
    rep = adopt(root)
    assert {x["path"] for x in examples(rep, "foreign")} == set(odd) | moved
    assert rep.foreign.files == len(odd) + len(moved) <= 20
    assert rep.failed.files == rep.missing.files == rep.mismatch.files == 0
    assert rep.adopted.files == len(files) - rep.foreign.files
    assert snapshot(outside) == before and (root / manifest_name(V0)).read_bytes() == manifest
    assert stat.S_ISFIFO(os.lstat(root / odd[0]).st_mode) and (root / odd[1]).is_symlink()


def test_a_file_owned_by_someone_else_is_copied_not_linked(replica, tmp_path):
    """A file of another user cannot be made read-only by us: its bytes are copied into the
    store (hashed as they are copied), and the path becomes a view of that copy."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    root = tmp_path / "cache"
    files = build_allensdk_tree(root, replica)
    rel = _nwbs(files, D0)[0]
    os.chown(root / rel, 12345, 12345)
    os.chmod(root / rel, 0o664)
    rep = adopt(root)
    assert rep.copied.files == 1 and rep.copied.bytes == len(files[rel])
    assert rep.duplicates_freed.files == 0  # the copy took the original's place
    want = hashes_of(root)
    assert_view_of_object(root, rel, want[rel], files[rel])
    assert os.lstat(root / rel).st_uid == 0


def test_views_of_unverified_objects_are_verified_in_place(cli, replica):
    """A tree synced with `--verify none`: its objects carry the unverified mark. Adopting
    hashes each view once, clears the mark where the bytes match (no copy, same inode), and
    fingerprints it in the index; a damaged one keeps its mark and is reported."""
    cli("sync", "--version", V0, "--verify", "none")
    root = cli.cache_dir
    files = expected_files(replica, V0)
    want = hashes_of(root)
    bad = _nwbs(files, D0)[0]
    obj = CacheLayout(root).object_path(want[bad])
    assert stat.S_IMODE(os.lstat(obj).st_mode) == 0o544
    os.chmod(obj, 0o744)
    with open(obj, "r+b") as f:
        f.write(b"X")
    os.chmod(obj, 0o544)
    inodes = {rel: os.lstat(root / rel).st_ino for rel in files}
    rep = adopt(root)
    assert rep.adopted.files == len(files) - 1 and rep.objects_added.files == len(files) - 1
    assert [x["path"] for x in examples(rep, "mismatch")] == [bad]
    assert stat.S_IMODE(os.lstat(obj).st_mode) == 0o544  # still marked: the next sync fetches it again
    for rel, body in files.items():
        if rel != bad:
            assert_view_of_object(root, rel, want[rel], body)
            assert os.lstat(root / rel).st_ino == inodes[rel]
    index = StateIndex(CacheLayout(root))
    assert index.load() and all(index.get(want[r]).xxh3 for r in files if r != bad)
    s = json.loads(cli("--json", "sync", "--version", V0).stdout.splitlines()[-1])
    assert s["bytes_fetched"] == len(files[bad])
    assert cli("verify").stdout.strip().endswith("ok")


CRASH = textwrap.dedent("""
    import itertools, os, sys
    sys.path.insert(0, {tests!r})
    from test_adopt import adopt
    real_replace, calls = os.replace, itertools.count(1)
    def replace(a, b, **kw):
        n = next(calls)  # atomic under the GIL: adopt renames from two threads
        if n == {at} and {before}:
            os._exit(9)
        real_replace(a, b, **kw)
        if n == {at}:
            os._exit(9)
    os.replace = replace
    adopt(__import__("pathlib").Path({root!r}))
    os._exit(0)
""")


@pytest.mark.parametrize("at,before", [(1, True), (2, False), (7, True), (30, False), (57, True), (59, False)])
def test_killed_mid_adopt_leaves_no_wrong_file_and_the_next_adopt_finishes(replica, tmp_path, at, before):
    root = tmp_path / "cache"
    files = build_allensdk_tree(root, replica)
    script = CRASH.format(tests=str(Path(__file__).parent), at=at, before=before, root=str(root))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120, check=False)
    assert p.returncode == 9, p.stderr.decode()[-2000:]
    layout = CacheLayout(root)
    # Every object under a final name holds the bytes its name says; every path its own bytes.
    for h in (q.name for q in layout.objects.glob("*/*/*") if not q.name.startswith(".")):
        assert _b2((layout.objects / h[:2] / h[2:4] / h).read_bytes()) == h
    for rel, body in files.items():
        assert (root / rel).read_bytes() == body
    rep = adopt(root)
    assert rep.adopted.files + rep.present.files == len(files) and rep.failed.files == 0
    want = hashes_of(root)
    for rel, body in files.items():
        assert_view_of_object(root, rel, want[rel], body)
    index = StateIndex(layout)
    assert index.load() and set(index.records) == set(want.values())


def test_a_store_directory_swapped_for_a_symlink_during_adopt_cannot_redirect_it(sandbox, replica, tmp_path,
                                                                                  monkeypatch):
    """The directory-swap race the store's writes are guarded against, run against adopt: right
    after the store has reached an object's directory to stage a file there, someone swaps the
    store's fan-out directory for a symlink out of cache_dir. The staged link lands in the real
    directory (named relative to the descriptor held), the publish refuses the symlink (those
    files are reported failed, the rest adopted), and nothing is written outside; a second
    adopt, with the symlink gone, finishes the job."""
    from mirror.store.objects import ObjectStore

    root = tmp_path / "cache"
    build_allensdk_tree(root, replica)
    layout = CacheLayout(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    real_staging = ObjectStore.staging
    swapped: list[Path] = []

    def staging_then_swap(self, file_hash):
        cm = real_staging(self, file_hash)
        held = cm.__enter__()
        if not swapped:  # once: the first object's fan-out directory
            fan = layout.object_path(file_hash).parent.parent
            os.rename(fan, fan.with_name(fan.name + ".moved"))
            os.symlink(outside, fan)
            swapped.append(fan)

        class _Held:
            def __enter__(self_inner):
                return held

            def __exit__(self_inner, *exc):
                return cm.__exit__(*exc)

        return _Held()

    monkeypatch.setattr(ObjectStore, "staging", staging_then_swap)
    # One file at a time: with two, another object of the same fan-out directory may be staged
    # in the moment of the swap and fail another way (seen once, in a full run of the suite).
    first = adopt(root, jobs=1)
    assert first.ok is False and first.failed.files >= 1  # that object's files, said and left
    assert all("symlink" in f["error"] for f in first.failed.examples)
    assert swapped and list(outside.iterdir()) == []  # nothing landed outside cache_dir
    moved = swapped[0].with_name(swapped[0].name + ".moved")
    assert not [p for p in moved.rglob(".vbo-tmp-*")]  # the staged link went with the failed publish
    swapped[0].unlink()
    os.rename(moved, swapped[0])
    monkeypatch.setattr(ObjectStore, "staging", real_staging)
    report = adopt(root)
    assert report.ok is True and report.failed.files == 0 and report.adopted.files > 0
    assert list(outside.iterdir()) == []
