"""A cache_dir that others can write into (shared scratch): symlinks planted in it are never
followed out of it. Nothing outside cache_dir is created, written, chmodded or deleted."""

from __future__ import annotations

import json
import os

from test_sync import PROJECT, assert_mirror, expected_files

from mirror.store.layout import CacheLayout


def _outside(tmp_path):
    out = tmp_path / "outside"
    out.mkdir()
    victim = out / "victim.txt"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    return out, victim


def _hash_of(cli, version: str, suffix: str) -> tuple[str, str]:
    """(view path, file_hash) of the first entry of `version` whose view ends with `suffix`."""
    doc = json.loads((cli.cache_dir / f"{PROJECT}_project_manifest_v{version}.json").read_bytes())
    for section in ("data_files", "metadata_files"):
        for e in doc[section].values():
            key = e["url"].split(".amazonaws.com/", 1)[1]
            if key.endswith(suffix):
                return f"{PROJECT}-{version}/{key.split('/', 1)[1]}", e["file_hash"]
    raise AssertionError(suffix)


def test_a_symlink_at_a_partial_is_replaced_not_written_through(cli, replica, tmp_path):
    out, victim = _outside(tmp_path)
    cli("manifests", "use", "1.0.1")
    _, h = _hash_of(cli, "1.0.1", ".nwb")
    partial = CacheLayout(cli.cache_dir).partial_path(h)
    partial.parent.mkdir(parents=True)
    partial.symlink_to(victim)
    cli("sync", expect=0)
    assert victim.read_text() == "precious" and (victim.stat().st_mode & 0o777) == 0o644
    assert_mirror(cli.cache_dir, replica, "1.0.1")


def test_a_symlinked_version_directory_is_refused_and_nothing_outside_is_touched(cli, replica, tmp_path):
    out, victim = _outside(tmp_path)
    cli("manifests", "use", "1.0.1")
    (cli.cache_dir / f"{PROJECT}-1.0.1").symlink_to(out, target_is_directory=True)
    r = cli("sync", expect=4)
    assert f"{PROJECT}-1.0.1 is a symlink" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["victim.txt"] and victim.read_text() == "precious"


def test_a_user_file_behind_a_symlinked_version_directory_is_never_removed_as_a_stray(cli, replica, tmp_path):
    """A stray in a real version directory is removed; the same file name reached through a
    symlinked version directory is not even looked at."""
    cli("sync", "--version", "1.0.1", expect=0)
    out, victim = _outside(tmp_path)
    view, _ = _hash_of(cli, "1.0.1", ".nwb")
    os.link(cli.cache_dir / view, out / "a-view-of-ours.nwb")  # looks exactly like one of our views
    real = cli.cache_dir / f"{PROJECT}-1.0.1"
    real.rename(cli.cache_dir / "moved-away")
    real.symlink_to(out, target_is_directory=True)
    cli("sync", "--version", "1.0.1", expect=4)
    assert (out / "a-view-of-ours.nwb").exists() and victim.read_text() == "precious"


def test_a_symlinked_store_directory_is_refused(cli, replica, tmp_path):
    out, victim = _outside(tmp_path)
    cli("manifests", "use", "1.0.1")
    _, h = _hash_of(cli, "1.0.1", ".nwb")
    fan = CacheLayout(cli.cache_dir).object_path(h).parent.parent  # objects/ab
    fan.parent.mkdir(parents=True)
    fan.symlink_to(out, target_is_directory=True)
    r = cli("sync", expect=4)
    assert "is a symlink" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["victim.txt"]


def test_a_cache_dir_that_is_itself_a_symlink_is_the_users_choice(cli, replica, tmp_path):
    real = tmp_path / "real-cache"
    real.mkdir()
    cli.cache_dir.symlink_to(real, target_is_directory=True)
    cli("sync", "--version", "0.1.0", expect=0)
    files = expected_files(replica, "0.1.0")
    assert all((real / rel).read_bytes() == body for rel, body in files.items())


def test_a_symlink_at_a_cached_manifest_is_not_read_through(cli, replica, tmp_path):
    """Even a valid manifest elsewhere is not taken through a symlink planted in cache_dir."""
    out, _ = _outside(tmp_path)
    cli("manifests", "use", "0.1.0")
    name = f"{PROJECT}_project_manifest_v0.1.0.json"
    elsewhere = out / name
    elsewhere.write_bytes((cli.cache_dir / name).read_bytes())
    (cli.cache_dir / name).unlink()
    (cli.cache_dir / name).symlink_to(elsewhere)
    r = cli("--offline", "sync", "--version", "0.1.0", expect=4)
    assert "is a symlink" in r.stderr
    assert not (cli.cache_dir / f"{PROJECT}-0.1.0").exists()


def _store_with_one_object(tmp_path, body: bytes):
    """(layout, store, hash, object path): a store under tmp_path/cache holding `body` as one object."""
    from mirror.store.facade import Store

    layout = CacheLayout(tmp_path / "cache")
    store = Store(layout, link_mode="hardlink")
    h = "ab" * 64
    obj = layout.object_path(h)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(body)
    return layout, store, h, obj


def test_a_directory_swapped_for_a_symlink_during_a_link_cannot_redirect_it(tmp_path, monkeypatch):
    """The race a check-then-use cannot close: right after vbo-mirror has reached a view's
    directory, someone swaps it for a symlink out of cache_dir. The link (linkat/renameat on the
    directory descriptor) lands in the real directory, never through the symlink; so does a
    removal."""
    from mirror.store.views import Linker

    layout, store, h, obj = _store_with_one_object(tmp_path, b"content")
    (layout.root / "v" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "victim.nwb").write_text("the user's file")

    real_link_at = Linker.link_at

    def swap_then_link(self, src, dfd, name, shown):
        os.rename(layout.root / "v", layout.root / "v.moved")
        os.symlink(outside, layout.root / "v")
        return real_link_at(self, src, dfd, name, shown)

    monkeypatch.setattr(Linker, "link_at", swap_then_link)
    store.link(h, ["v/sub/victim.nwb"])
    assert (outside / "sub" / "victim.nwb").read_text() == "the user's file"  # untouched
    assert (layout.root / "v.moved" / "sub" / "victim.nwb").read_bytes() == b"content"  # where it was reached
    # and with the symlink now in place, the next operation refuses it instead of following it
    monkeypatch.setattr(Linker, "link_at", real_link_at)
    import pytest

    from mirror.errors import StoreError

    with pytest.raises(StoreError, match="symlink"):
        store.link(h, ["v/sub/victim.nwb"])
    with pytest.raises(StoreError, match="symlink"):
        store.remove_view("v/sub/victim.nwb")
    assert (outside / "sub" / "victim.nwb").read_text() == "the user's file"


def test_a_store_swapped_for_a_symlink_during_a_link_cannot_give_a_view_other_bytes(tmp_path, monkeypatch):
    """The other end of a link: right after vbo-mirror has reached the object's directory,
    someone swaps `.vbo-mirror` for a symlink to a tree of their own with a file at the same
    object path. The view is linked from the directory descriptor reached before the swap
    (linkat relative to it), so it gets the store's object, never their file."""
    from mirror.store.views import Linker

    layout, store, h, obj = _store_with_one_object(tmp_path, b"verified content")
    theirs = tmp_path / "theirs"
    fake = theirs / obj.relative_to(layout.meta)
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"someone else's bytes")

    real_link_at = Linker.link_at

    def swap_then_link(self, *args):
        if not (layout.root / "store.moved").exists():
            os.rename(layout.meta, layout.root / "store.moved")
            os.symlink(theirs, layout.meta)
        return real_link_at(self, *args)

    monkeypatch.setattr(Linker, "link_at", swap_then_link)
    store.link(h, ["v/file.nwb"])
    assert (layout.root / "v" / "file.nwb").read_bytes() == b"verified content"
    assert fake.read_bytes() == b"someone else's bytes" and fake.stat().st_nlink == 1
