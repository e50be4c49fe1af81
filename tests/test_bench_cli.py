"""`vbo-mirror bench`: a matrix of -j x part size over real objects of a version, counted
byte for byte, discarded or written to a scratch directory that is removed."""

from __future__ import annotations

import json

from mirror.bench import Cell, best_of


def test_bench_measures_every_cell_over_the_same_objects(cli, replica, tmp_path):
    r = cli("--json", "bench", "--version", "1.0.1", "-j", "1,3", "--part-size", "64KiB,128KiB",
            "--bytes", "300KB", "--repeat", "1")
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
    assert all(c["mb_per_s_min"] == c["mb_per_s"] == c["mb_per_s_max"] for c in summary["cells"])  # one run each
    rec = summary["recommendation"]
    assert rec["jobs"] is None and any("--repeat" in n for n in rec["notes"])  # one run shows no spread


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
    assert "no recommendation" in r.stdout and "too short" in r.stdout  # 200 KB per cell says nothing
    assert scratch.is_dir() and list(scratch.iterdir()) == []


def test_bench_rejects_bad_matrices(cli):
    r = cli("bench", "-j", "0,4", expect=2)
    assert "at least 1" in r.stderr
    r = cli("bench", "--part-size", "32KiB", expect=2)
    assert "at least 64 KiB" in r.stderr
    r = cli("bench", "--part-size", "10 parsecs", expect=2)
    assert "not a size" in r.stderr


def test_the_issues_matrix_on_the_sandbox_recommends_nothing_and_says_why(cli):
    """`bench -j 4,16,64 --part-size 8MiB,32MiB` measured 15 MB per cell in 0.06 s and
    printed a 'best' that two runs disagreed on."""
    r = cli("bench", "--version", "1.0.1", "-j", "4,16,64", "--part-size", "8MiB,32MiB")
    assert "best:" not in r.stdout and "no recommendation" in r.stdout
    assert "under --bytes" in r.stdout and "fetch alike" in r.stdout and "too short" in r.stdout
    assert "median of 3 runs" in r.stdout


def _row(jobs, part, low, mid, high):
    """A cell of 10 GB whose median run went at `mid` MB/s, its repeats from `low` to `high`."""
    from mirror.bench import Row

    return Row(Cell(jobs, part, 0, 10**10, 10, 100, 10**4 / mid, 1.0, 100 << 20), low, high)


def test_a_setting_is_recommended_only_beyond_the_spread():
    from mirror.bench import judge

    clear = [_row(4, 8 << 20, 300, 310, 320), _row(64, 8 << 20, 600, 620, 640), _row(16, 32 << 20, 400, 420, 440)]
    v = judge(clear, repeat=3, budget=10**10)
    assert (v.best.jobs, v.best.part_size) == (64, 8 << 20)
    overlapping = [_row(4, 8 << 20, 300, 450, 610), _row(64, 8 << 20, 600, 620, 640)]
    assert judge(overlapping, repeat=3, budget=10**10).best is None
    default_as_good = [_row(64, 8 << 20, 600, 620, 640), _row(16, 32 << 20, 590, 610, 630), _row(1, 8 << 20, 1, 2, 3)]
    v = judge(default_as_good, repeat=3, budget=10**10)
    assert v.best is None and any("defaults" in n for n in v.notes)
    assert judge(clear, repeat=1, budget=10**10).best is None


def test_best_of_takes_the_median_repeat():
    cells = [Cell(4, 1 << 20, r, 100, 1, 1, s, 0.1) for r, s in enumerate((1.0, 2.0, 4.0))]
    (only,) = best_of(cells)
    assert only.seconds == 2.0
