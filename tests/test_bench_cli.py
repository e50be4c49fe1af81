"""`vbo-mirror bench`: a matrix of -j x part size over real objects of a version, counted
byte for byte, discarded or written to a scratch directory that is removed."""

from __future__ import annotations

import json

from mirror.bench import Cell, best_of


def test_bench_measures_every_cell_over_the_same_objects(cli, replica, tmp_path):
    r = cli("--json", "bench", "--version", "1.0.1", "-j", "1,3", "--part-size", "64KiB,128KiB",
            "--bytes", "300KB")
    events = [json.loads(x) for x in r.stdout.splitlines()]
    cells = [e for e in events if e["event"] == "cell"]
    assert [(c["jobs"], c["part_size"]) for c in cells] == [(1, 64 << 10), (3, 64 << 10), (1, 128 << 10), (3, 128 << 10)]
    sizes = sorted((f.size for f in replica.data["1.0.1"].values()), reverse=True)
    want, total = [], 0
    for s in sizes:  # the largest objects first, up to the budget
        if want and total >= 300_000:
            break
        want.append(s)
        total += s
    assert {c["bytes"] for c in cells} == {total} and {c["objects"] for c in cells} == {len(want)}
    assert cells[0]["requests"] == sum(-(-s // (64 << 10)) for s in want)
    assert all(c["mb_per_s"] > 0 and c["seconds"] > 0 for c in cells)
    summary = events[-1]
    assert summary["event"] == "summary" and len(summary["cells"]) == 4
    assert summary["best"]["mb_per_s"] == max(c["mb_per_s"] for c in summary["cells"])


def test_bench_to_disk_cleans_up_and_draws_a_plot(cli, tmp_path):
    scratch = tmp_path / "scratch"
    png = tmp_path / "bench.png"
    r = cli("bench", "--version", "1.0.1", "-j", "2", "--part-size", "64KiB", "--bytes", "200KB",
            "--to-disk", str(scratch), "--plot", str(png), expect=None)
    if r.exit_code == 2 and "matplotlib" in r.stderr:  # the optional extra is not installed
        r = cli("bench", "--version", "1.0.1", "-j", "2", "--part-size", "64KiB", "--bytes", "200KB",
                "--to-disk", str(scratch))
    else:
        assert r.exit_code == 0, r.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best: vbo-mirror sync -j 2" in r.stdout
    assert scratch.is_dir() and list(scratch.iterdir()) == []


def test_bench_rejects_bad_matrices(cli):
    r = cli("bench", "-j", "0,4", expect=2)
    assert "at least 1" in r.stderr
    r = cli("bench", "--part-size", "32KiB", expect=2)
    assert "at least 64 KiB" in r.stderr
    r = cli("bench", "--part-size", "10 parsecs", expect=2)
    assert "not a size" in r.stderr


def test_best_of_takes_the_median_repeat():
    cells = [Cell(4, 1 << 20, r, 100, 1, 1, s, 0.1) for r, s in enumerate((1.0, 2.0, 4.0))]
    (only,) = best_of(cells)
    assert only.seconds == 2.0
