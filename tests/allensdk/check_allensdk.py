"""`make test-allensdk`: AllenSDK 2.16.2 on trees vbo-mirror made, against the sandbox.

    .venv/bin/python tests/allensdk/check_allensdk.py [--allensdk-python .venv-allensdk/bin/python]
        [--versions 1.0.1 1.1.0] [--keep] [--report FILE.json]

Runs from the dev venv (vbo-mirror, moto, the fault proxy); AllenSDK runs in its own venv
(allensdk_side.py), because the two cannot share one: AllenSDK pins pandas==1.5.3 and
numpy<1.24, vbo-mirror needs pandas>=2.1. Both sides describe their DataFrames with the same
function (allensdk_side.describe_frame) as JSON, and this script compares the descriptions.

The sandbox (moto on 127.0.0.1 with the replica, mirror.sandbox.Sandbox) is started here and
stopped at the end whatever happens (an exception, Ctrl-C, SIGTERM). AllenSDK's boto3 is pointed
at it by the environment only: AWS_ENDPOINT_URL_S3 and an AWS_CONFIG_FILE with path-style
addressing, dummy credentials (AllenSDK's client is unsigned anyway).

Checks (each PASS / FAIL / XFAIL in the summary; the exit status is 1 if any is FAIL):
 1. from_local_cache on a tree synced by `vbo-mirror sync --version V` (each of --versions), run
    after the sandbox is stopped, with AWS_ENDPOINT_URL_S3 on the dead port and every socket
    connect refused: the current manifest is vbo-mirror's, each version loads with its four
    tables, every data file of the manifest is where AllenSDK looks (with the manifest's hash),
    and every behavior session / ophys experiment resolves to an existing NWB through
    get_behavior_session / get_behavior_ophys_experiment (whose NWB reader is stubbed: the
    replica's NWBs are not HDF5).
 2. The four tables of each version, AllenSDK's get_*_table() against vbo-mirror's
    Mirror(..., offline=True).get_*_table() on the same tree: index name and dtype, columns,
    AllenSDK's fixed column order, dtypes, Python types in object columns, element types of list
    cells, and every value.
 3. from_s3_cache on vbo-mirror trees through a counting proxy: (a) the versions synced: nothing
    vbo-mirror already holds may be fetched again; (b) a tree with 1.0.0 only, then AllenSDK asked
    for 1.0.1 (whose NWBs are 1.0.0's bytes): content the tree holds must not be fetched again
    (AllenSDK finds it through the _downloaded_data.json that vbo-mirror writes, and links it).
 4. compare_manifests of AllenSDK for every ordered pair of the replica's manifests against
    `vbo-mirror manifests compare A B`: equal text, else a line diff.
 5. The same tree as 1, plus `sync --version V --layout bucket` of the last version: AllenSDK's
    from_local_cache(use_static_cache=True) (a mounted bucket's layout) lists and loads that
    version, its tables, and finds every data file, offline.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]

from allensdk_side import BUCKET, TABLES, describe_frame, manifest_name

from mirror.sandbox import ReplicaSpec, Sandbox

# The tests' replica (tests/conftest.py TEST_SPEC): small for moto, ~3 MB per NWB generation.
SPEC = ReplicaSpec(seed=7, scale=1 / 4000, part_size=64 << 10, multipart_threshold=128 << 10)
SUBPROCESS_TIMEOUT = 900


@dataclass
class Check:
    number: str
    title: str
    status: str = "PASS"  # PASS | FAIL | XFAIL
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, line: str) -> None:
        self.status = "FAIL"
        self.details.append(line)


class Stop(Exception):
    pass


def _on_signal(signum, _frame):
    raise Stop(f"signal {signum}")


class Run:
    """The two sides of one check: vbo-mirror (this venv) and AllenSDK (its own venv, `side`),
    each run as a subprocess with its log; `dataset`: vbo-mirror's --dataset (None: default)."""

    side = "allensdk_side.py"
    prefix = "allensdk"  # of the side's result files and log labels
    dataset: str | None = None

    def __init__(self, args) -> None:
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="vbo-allensdk-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.aws_config = self.work / "aws-config"
        self.aws_config.write_text("[default]\nregion = us-west-2\ns3 =\n  addressing_style = path\n")
        self.vbo = Path(sys.executable).parent / "vbo-mirror"
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.step = 0

    # --- running the two sides ------------------------------------------------------------------

    def clean_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VBO_MIRROR_", "BOTO_"))}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true",
                   AWS_SHARED_CREDENTIALS_FILE=str(self.work / "no-credentials"))
        return env

    def allensdk_env(self, endpoint: str) -> dict[str, str]:
        env = self.clean_env()
        env.update(AWS_ENDPOINT_URL_S3=endpoint, AWS_CONFIG_FILE=str(self.aws_config), AWS_DEFAULT_REGION="us-west-2",
                   TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
        return env

    def run(self, argv: list[str], *, env: dict[str, str], label: str) -> subprocess.CompletedProcess:
        self.step += 1
        log = self.logs / f"{self.step:02d}-{label}.log"
        t0 = time.monotonic()
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=self.work,
                           check=False)
        log.write_text(f"$ {' '.join(argv)}\nexit {r.returncode} in {time.monotonic() - t0:.1f}s\n"
                       f"--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
        r.log = log  # type: ignore[attr-defined]
        return r

    def vbo_mirror(self, cache: Path, endpoint: str | None, *args: str, label: str) -> subprocess.CompletedProcess:
        argv = ([str(self.vbo), "--cache-dir", str(cache)] + (["--endpoint-url", endpoint] if endpoint else [])
                + (["--dataset", self.dataset] if self.dataset else []) + list(args))
        r = self.run(argv, env=self.clean_env(), label=label)
        if r.returncode != 0:
            raise RuntimeError(f"vbo-mirror {' '.join(args)} exited {r.returncode}: {_tail(r.stderr)} (log {r.log})")
        return r

    def allensdk(self, mode: str, cache: Path, endpoint: str, *extra: str) -> dict:
        out = self.work / f"{self.prefix}-{mode}-{self.step + 1:02d}.json"
        argv = [self.args.allensdk_python, str(HERE / self.side), mode, "--cache-dir", str(cache),
                "--out", str(out), *extra]
        r = self.run(argv, env=self.allensdk_env(endpoint), label=f"{self.prefix}-{mode}")
        if not out.exists():
            raise RuntimeError(f"{self.side} {mode} wrote no result (exit {r.returncode}): {_tail(r.stderr)} "
                               f"(log {r.log})")
        data = json.loads(out.read_text())
        if "error" in data:
            raise RuntimeError(f"{self.side} {mode}: {data['error']}\n{data.get('traceback', '')}")
        return data

    def sync(self, cache: Path, endpoint: str, versions: list[str]) -> None:
        for v in versions:
            self.vbo_mirror(cache, endpoint, "sync", "--version", v, "--stats", "0", label=f"sync-{v}")


# --- check 1 and 2: from_local_cache and the tables, offline -----------------------------------------


def both_sides_offline(run: Run, tree: Path, dead_endpoint: str, versions: list[str], tables: dict[str, str],
                       c1: Check, c2: Check, *, manifest_name, dataset: str | None = None) -> tuple[dict, dict, dict]:
    """AllenSDK's offline side (`allensdk local`) and vbo-mirror's frames of the same tree, each
    described (`tables`: name → getter), and vbo-mirror's manifests; what both datasets' check 1
    asks of the opening goes into `c1`: AllenSDK opens vbo-mirror's current manifest (read before
    AllenSDK, which rewrites _manifest_last_used.txt), lists every version, uses no network."""
    from mirror.api import Mirror

    kw = {"dataset": dataset} if dataset else {}
    with Mirror(tree, offline=True, **kw) as m:
        current = m.current_manifest()
    t0 = time.monotonic()
    side = run.allensdk("local", tree, dead_endpoint, "--versions", *versions)
    c1.seconds = time.monotonic() - t0

    ours: dict[str, dict[str, dict]] = {}
    t0 = time.monotonic()
    with Mirror(tree, offline=True, **kw) as m:
        for v in versions:
            ours[v] = {}
            for table, getter in tables.items():
                try:
                    ours[v][table] = describe_frame(getattr(m, getter)(version=v))
                except Exception as exc:  # noqa: BLE001 - reported as a difference
                    ours[v][table] = {"error": f"{type(exc).__name__}: {exc}"}
        manifests = {v: m.manifest(v) for v in versions}
    c2.seconds = time.monotonic() - t0

    if side["current_manifest_at_open"] != current:
        c1.fail(f"AllenSDK opened {side['current_manifest_at_open']}, vbo-mirror's current manifest is {current}")
    else:
        c1.details.append(f"current manifest: {current} (AllenSDK and vbo-mirror agree)")
    missing = [manifest_name(v) for v in versions if manifest_name(v) not in side["downloaded_manifests"]]
    if missing:
        c1.fail(f"list_all_downloaded_manifests() lacks {missing}: {side['downloaded_manifests']}")
    if side["network_attempts"]:
        c1.fail(f"network used: {side['network_attempts'][:5]}")
    else:
        c1.details.append("no connection attempted (socket.connect audited and refused)")
    return side, ours, manifests


def check_local(run: Run, tree: Path, dead_endpoint: str, versions: list[str]) -> tuple[Check, Check]:
    c1 = Check("1", "from_local_cache on a vbo-mirror tree, offline")
    c2 = Check("2", "get_*_table(): AllenSDK vs vbo-mirror")
    side, ours, manifests = both_sides_offline(run, tree, dead_endpoint, versions, TABLES, c1, c2,
                                               manifest_name=manifest_name)
    for v in versions:
        sv = side["versions"][v]
        if "error" in sv:
            c1.fail(f"{v}: {sv['error']}")
            continue
        if sv.get("loaded") != manifest_name(v):
            c1.fail(f"{v}: AllenSDK loaded {sv.get('loaded')}")
        for line in sv["problems"]:
            c1.fail(f"{v}: {line}")
        n_files = len(manifests[v].data_files)
        ok_files = sum(1 for f in sv["files"].values() if f["exists"] and f["hash_ok"])
        if len(sv["files"]) != n_files:
            c1.fail(f"{v}: AllenSDK sees {len(sv['files'])} data files, the manifest has {n_files}")
        rows = {k: sv["tables"][t]["rows"] for k, t in (("behavior_session", "behavior_session_table"),
                                                         ("ophys_experiment", "ophys_experiment_table"))}
        resolved = {k: len(x) for k, x in sv["resolved"].items()}
        c1.details.append(f"{v}: 4 tables loaded; {ok_files}/{n_files} data files at AllenSDK's path with the "
                          f"manifest's BLAKE2b; NWB resolved for {resolved['behavior_session']}/"
                          f"{rows['behavior_session']} behavior sessions and {resolved['ophys_experiment']}/"
                          f"{rows['ophys_experiment']} ophys experiments")
        for k, n in rows.items():
            if resolved[k] != n:
                c1.fail(f"{v}: only {resolved[k]} of {n} {k} rows resolve to a file")
    c1.notes += [f"AllenSDK warned: {w}" for w in side["warnings"]]

    # 2: the tables, side by side (the cells table keeps the CSV's column order)
    compare_tables(c2, side, ours, versions, TABLES, side["column_order"], ordered=lambda t: t != "ophys_cells_table")
    return c1, c2


def compare_tables(c2: Check, side: dict, ours: dict, versions: list[str], tables, column_order: list[str], *,
                   ordered) -> None:
    """Check 2 of both datasets: each version's tables as AllenSDK described them (`side`) against
    vbo-mirror's (`ours`); `ordered(table)`: AllenSDK puts that table's columns in `column_order`
    (else the CSV's whole order is compared)."""
    for v in versions:
        for table in tables:
            theirs = side["versions"][v].get("tables", {}).get(table)
            mine = ours[v][table]
            if theirs is None:
                c2.fail(f"{v} {table}: AllenSDK did not load it")
                continue
            if "error" in mine:
                c2.fail(f"{v} {table}: vbo-mirror: {mine['error']}")
                continue
            diffs, notes = compare_descriptions(theirs, mine, column_order, ordered=ordered(table))
            for d in diffs:
                c2.fail(f"{v} {table}: {d}")
            c2.notes += [f"{v} {table}: {n}" for n in notes]
            if not diffs:
                c2.details.append(f"{v} {table}: same index ({theirs['index']['name']}, {theirs['index']['dtype']}), "
                                  f"{len(theirs['columns'])} columns{'' if ordered(table) else ' in the same order'} "
                                  f"with the same dtypes, list columns {theirs['list_columns'] or 'none'}, "
                                  f"{theirs['rows']} rows of equal values")


def compare_descriptions(a: dict, b: dict, column_order: list[str], *, ordered: bool) -> tuple[list[str], list[str]]:
    """Differences between AllenSDK's description (a) and vbo-mirror's (b). `ordered`: a table
    AllenSDK puts in `column_order` (its VBO_METADATA_COLUMN_ORDER, as AllenSDK reported it;
    the columns it does not name follow in Python set order, which changes from run to run,
    so only their set is compared; the cells table keeps the CSV's order)."""
    diffs: list[str] = []
    notes: list[str] = []
    if a["index"] != b["index"]:
        diffs.append(f"index {a['index']} (AllenSDK) vs {b['index']} (vbo-mirror)")
    ca, cb = a["columns"], b["columns"]
    if set(ca) != set(cb):
        only_a, only_b = sorted(set(ca) - set(cb)), sorted(set(cb) - set(ca))
        diffs.append(f"columns only in AllenSDK's: {only_a}; only in vbo-mirror's: {only_b}")
    fixed_a = [c for c in ca if c in column_order] if ordered else ca
    fixed_b = [c for c in cb if c in column_order] if ordered else cb
    if fixed_a != fixed_b or ca[:len(fixed_a)] != fixed_a or cb[:len(fixed_b)] != fixed_b:
        diffs.append(f"column order: AllenSDK {ca} vs vbo-mirror {cb}")
    elif ca != cb:
        notes.append(f"the {len(ca) - len(fixed_a)} columns after AllenSDK's fixed order come in another order "
                     "(AllenSDK emits them in set order, which varies between runs)")
    for c in ca:
        if c not in b["dtypes"]:
            continue
        if a["dtypes"][c] != b["dtypes"][c]:
            diffs.append(f"column {c!r}: dtype {a['dtypes'][c]} (AllenSDK) vs {b['dtypes'][c]} (vbo-mirror)")
        ta, tb = a["cell_types"].get(c), b["cell_types"].get(c)
        if ta is not None and tb is not None and ta != tb:
            diffs.append(f"column {c!r}: cells are {ta} (AllenSDK) vs {tb} (vbo-mirror)")
        la, lb = a["list_elements"].get(c), b["list_elements"].get(c)
        if (la or lb) and la != lb:
            diffs.append(f"column {c!r}: list elements are {la} (AllenSDK) vs {lb} (vbo-mirror)")
    if a["index_values"] != b["index_values"]:
        diffs.append("index values differ" + _first_difference(a["index_values"], b["index_values"]))
    for c in ca:
        if c in b["values"] and a["values"][c] != b["values"][c]:
            diffs.append(f"column {c!r}: values differ" + _first_difference(a["values"][c], b["values"][c]))
    return diffs, notes


def _first_difference(x: list, y: list) -> str:
    if len(x) != len(y):
        return f" ({len(x)} rows vs {len(y)})"
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return f" (first at row {i + 1}: {p!r} (AllenSDK) vs {q!r} (vbo-mirror))"
    return ""


# --- check 3: from_s3_cache on vbo-mirror trees, counting what it fetches ---------------------------------


def _classify(path_qs: str) -> tuple[str, str]:
    """(kind, key) of a path-style request: kind is manifest, metadata, data or listing."""
    parsed = urllib.parse.urlsplit(path_qs)
    parts = parsed.path.lstrip("/").split("/", 1)
    key = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
    if not key:
        return "listing", parsed.query
    if "/manifests/" in key:
        return "manifest", key
    if "/project_metadata/" in key:
        return "metadata", key
    return "data", key


def check_s3(run: Run, url: str, tree_a: Path, tree_b: Path, versions: list[str]) -> Check:
    from faultproxy import FaultProxy

    c = Check("3", "from_s3_cache on vbo-mirror trees: nothing fetched twice")
    xfail: list[str] = []
    t0 = time.monotonic()
    with FaultProxy(url) as proxy:
        # (a) the versions vbo-mirror synced: every file is in place
        side = run.allensdk("s3", tree_a, proxy.url, "--versions", *versions)
        reqs = [(m, _classify(p)) for m, p, _h in proxy.requests]
        proxy.requests.clear()
        for v in versions:
            if "error" in side["versions"][v]:
                c.fail(f"(a) {v}: {side['versions'][v]['error']}")
        # the tree holds every file of these versions: any GET of a table or NWB fetches it again
        again = [key for m, (kind, key) in reqs if m == "GET" and kind in ("data", "metadata")]
        listings = sum(1 for m, (kind, _k) in reqs if kind == "listing")
        n_files = sum(len(side["versions"][v].get("files", {})) for v in versions)
        line = (f"(a) versions {', '.join(versions)}: AllenSDK asked for {n_files} files (download_metadata/"
                f"download_data); {len(again)} GETs of tables or NWBs, {listings} listing requests, "
                f"{sum(1 for m, (kind, _k) in reqs if kind == 'manifest')} manifest GETs")
        if again:
            xfail.append(line + f"; fetched again: {again[:5]}")
        else:
            c.details.append(line)

        # (b) a tree with 1.0.0 only; AllenSDK moves on to 1.0.1, whose NWBs are 1.0.0's bytes
        m0 = json.loads((tree_b / manifest_name("1.0.0")).read_text())
        stored = {e["file_hash"] for part in ("data_files", "metadata_files") for e in m0[part].values()}
        had_json = (tree_b / "_downloaded_data.json").exists()
        side = run.allensdk("s3", tree_b, proxy.url, "--versions", "1.0.0", "1.0.1")
        reqs = [(m, p) for m, p, _h in proxy.requests]
        proxy.requests.clear()
        for v in ("1.0.0", "1.0.1"):
            if "error" in side["versions"][v]:
                c.fail(f"(b) {v}: {side['versions'][v]['error']}")
        files = side["versions"]["1.0.1"].get("files", {})
        by_key = {urllib.parse.urlsplit(f["url"]).path.lstrip("/"): f for f in files.values()}
        refetched = []
        for m, p in reqs:
            kind, key = _classify(p)
            f = by_key.get(key)
            if m == "GET" and kind in ("data", "metadata") and f is not None and f["file_hash"] in stored:
                refetched.append(key.rsplit("/", 1)[-1])
        same = sum(1 for f in by_key.values() if f["file_hash"] in stored)
        symlinked = sum(1 for f in files.values() if f.get("symlink"))
        line = (f"(b) tree with 1.0.0 only (_downloaded_data.json {'present' if had_json else 'absent'}), AllenSDK "
                f"loads 1.0.1: {same} of its {len(by_key)} files (tables and NWBs) have bytes the tree holds; "
                f"{len(refetched)} of them were downloaded again, {symlinked} linked by AllenSDK")
        if refetched:
            xfail.append(line)
        else:
            c.details.append(line)
        c.notes += [f"AllenSDK warned: {w}" for w in side["warnings"]]
    c.seconds = time.monotonic() - t0
    for line in xfail:  # vbo-mirror writes _downloaded_data.json, through which AllenSDK finds content
        c.fail(line)
    return c


# --- check 5: the bucket layout, opened with use_static_cache=True ------------------------------------


def check_static(run: Run, tree: Path, dead_endpoint: str, version: str) -> Check:
    c = Check("5", "from_local_cache(use_static_cache=True) on `sync --layout bucket`, offline")
    t0 = time.monotonic()
    side = run.allensdk("local", tree, dead_endpoint, "--static", "--versions", version)
    c.seconds = time.monotonic() - t0
    if side["network_attempts"]:
        c.fail(f"network used: {side['network_attempts'][:5]}")
    sv = side["versions"][version]
    if "error" in sv:
        c.fail(f"{version}: {sv['error']}")
        return c
    for line in sv["problems"]:
        c.fail(f"{version}: {line}")
    ok_files = sum(1 for f in sv["files"].values() if f["exists"] and f["hash_ok"])
    c.details.append(f"{version}: AllenSDK's static cache listed {side['downloaded_manifests']}, loaded "
                     f"{sv.get('loaded')}; 4 tables loaded; {ok_files}/{len(sv['files'])} data files at "
                     f"{{cache}}/visual-behavior-ophys/... with the manifest's BLAKE2b; the same tree also holds "
                     "AllenSDK's versioned layout (one store, two kinds of views)")
    return c


# --- check 4: compare_manifests -----------------------------------------------------------------------


def check_compare(run: Run, url: str, *, bucket: str = BUCKET, title: str = "compare_manifests") -> Check:
    c = Check("4", f"{title}: AllenSDK vs `vbo-mirror manifests compare`")
    t0 = time.monotonic()
    side = run.allensdk("compare", run.work / "allensdk-compare-cache", url, "--bucket", bucket)
    cache = run.work / "vbo-compare-cache"
    equal = 0
    for pair, theirs in side["pairs"].items():
        a, b = pair.split(" ")
        r = run.vbo_mirror(cache, url, "manifests", "compare", a, b, label="compare")
        ours = r.stdout
        # click.echo ends the text with one newline; AllenSDK's message ends with one when it lists changes
        if theirs.rstrip("\n") == ours.rstrip("\n"):
            equal += 1
            continue
        diff = difflib.unified_diff(theirs.rstrip("\n").splitlines(), ours.rstrip("\n").splitlines(),
                                    "AllenSDK", "vbo-mirror", lineterm="", n=0)
        c.fail(f"{_short(a)} -> {_short(b)} differs:\n      " + "\n      ".join(diff))
    n = len(side["manifests"])
    c.details.insert(0, f"{equal} of {len(side['pairs'])} ordered pairs of {n} manifests give the same text")
    if len(side["pairs"]) != n * (n - 1) or n < 2:
        c.fail(f"AllenSDK listed {side['manifests']}")
    c.seconds = time.monotonic() - t0
    return c


def _short(name: str) -> str:
    """`v1.0.1` for any project's `<project>_project_manifest_v1.0.1.json`."""
    return name.rpartition("_project_manifest_")[2].removesuffix(".json")


def _tail(text: str, n: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-n:])


# --- main -------------------------------------------------------------------------------------------


def allensdk_version(args, name: str) -> str | None:
    """AllenSDK's version in --allensdk-python (made absolute, not resolved: a venv's python is a
    symlink to the base interpreter), or None after saying why there is none."""
    args.allensdk_python = os.path.abspath(args.allensdk_python)
    py = Path(args.allensdk_python)
    if not os.access(py, os.X_OK):
        print(f"{name}: no AllenSDK Python at {py} (make test-allensdk builds .venv-allensdk)", file=sys.stderr)
        return None
    probe = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('allensdk'))"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        print(f"{name}: {py} has no allensdk: {_tail(probe.stderr)}", file=sys.stderr)
        return None
    return probe.stdout.strip()


def run_checks(run: Run, sandbox: Sandbox, *, prepare, online, offline, offline_titles: tuple[str, str],
               title: str, report: str | None, keep: bool) -> int:
    """What both halves of `make test-allensdk` do around their checks: start the sandbox and
    `prepare(url)` (the trees vbo-mirror syncs), run `online(url)`'s (number, title, function)
    checks (a crash is that check's FAIL), stop the sandbox, then `offline(url)` with its port dead
    (checks 1 and 2, whose titles are `offline_titles`, and whatever follows them); then the summary,
    the JSON report and the work dir, kept (`keep`, or a FAIL) or removed. The exit status."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t_start = time.monotonic()
    checks: list[Check] = []
    failed_setup = None
    try:
        try:
            t0 = time.monotonic()
            sandbox.start()
            url = sandbox.url
            trees = prepare(url)
            print(f"  sandbox at {url}; {trees} synced by vbo-mirror in {time.monotonic() - t0:.1f}s", flush=True)
            for number, name, step in online(url):
                try:
                    checks.append(step())
                except (Stop, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - one check's crash is its FAIL
                    checks.append(_crashed(exc, number, name))
                print(f"  check {checks[-1].number}: {checks[-1].status} ({checks[-1].seconds:.1f}s)", flush=True)
        finally:
            sandbox.stop()
        # 1 and 2 with the sandbox gone: its port now refuses, and AllenSDK is pointed at it
        try:
            checks += offline(url)
        except (Stop, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001
            checks += [_crashed(exc, "1", offline_titles[0]),
                       Check("2", offline_titles[1], "FAIL", ["not run: check 1 crashed"])]
    except (Stop, KeyboardInterrupt) as exc:
        failed_setup = f"interrupted ({exc or 'Ctrl-C'})"
    except Exception as exc:  # noqa: BLE001 - set-up failed (sandbox, sync)
        failed_setup = f"{type(exc).__name__}: {exc}"
    finally:
        sandbox.stop()

    checks.sort(key=lambda c: c.number)
    total = time.monotonic() - t_start
    print(render(checks, failed_setup, total, title=title))
    if report:
        Path(report).write_text(json.dumps({"setup_error": failed_setup, "seconds": round(total, 1),
                                            "checks": [c.__dict__ for c in checks]}, indent=1))
    bad = failed_setup is not None or any(c.status == "FAIL" for c in checks)
    if keep or bad:
        print(f"work dir kept: {run.work} (logs/, {run.prefix}-*.json)")
    else:
        shutil.rmtree(run.work, ignore_errors=True)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allensdk-python", default=str(ROOT / ".venv-allensdk" / "bin" / "python"),
                    help="Python of the AllenSDK venv (default: .venv-allensdk/bin/python)")
    ap.add_argument("--versions", nargs="+", default=["1.0.1", "1.1.0"],
                    help="versions vbo-mirror syncs for checks 1-3 (AllenSDK's project cache takes 1.x only)")
    ap.add_argument("--workdir", help="keep everything here (default: a temp dir, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (trees, logs, JSON of both sides)")
    ap.add_argument("--report", help="also write the results as JSON here")
    args = ap.parse_args()
    version = allensdk_version(args, "check_allensdk")
    if version is None:
        return 2
    run = Run(args)
    print(f"check_allensdk: AllenSDK {version} from {args.allensdk_python}; work dir {run.work}", flush=True)
    tree_local, tree_s3, tree_b = run.work / "tree-local", run.work / "tree-s3", run.work / "tree-1.0.0"

    def prepare(url: str) -> str:
        run.sync(tree_local, url, args.versions)
        run.vbo_mirror(tree_local, url, "sync", "--version", args.versions[-1], "--layout", "bucket",
                       "--stats", "0", label="sync-bucket")
        run.sync(tree_s3, url, args.versions)
        run.sync(tree_b, url, ["1.0.0"])
        return "three trees"

    return run_checks(
        run, Sandbox(SPEC, log_path=run.work / "moto.log"), prepare=prepare,
        online=lambda url: [("4", "compare_manifests", lambda: check_compare(run, url)),
                            ("3", "from_s3_cache on vbo-mirror trees",
                             lambda: check_s3(run, url, tree_s3, tree_b, args.versions))],
        offline=lambda url: [*check_local(run, tree_local, url, args.versions),
                             check_static(run, tree_local, url, args.versions[-1])],
        offline_titles=("from_local_cache on a vbo-mirror tree, offline", "get_*_table(): AllenSDK vs vbo-mirror"),
        title="AllenSDK 2.16.2 against vbo-mirror: summary", report=args.report, keep=args.keep or bool(args.workdir))


def _crashed(exc: Exception, number: str, title: str) -> Check:
    import traceback

    return Check(number, title, "FAIL", [f"crashed: {type(exc).__name__}: {exc}"],
                 ["".join(traceback.format_exception(exc))[-2000:]])


def render(checks: list[Check], setup_error: str | None, seconds: float, *,
           title: str = "AllenSDK 2.16.2 against vbo-mirror: summary") -> str:
    lines = ["", title, "=" * len(title)]
    if setup_error:
        lines.append(f"RUN INCOMPLETE: {setup_error}")
    for c in checks:
        lines.append(f"[{c.status:5}] {c.number}. {c.title}  ({c.seconds:.1f}s)")
        lines += [f"        {d}" for d in c.details]
        lines += [f"        note: {n}" for n in c.notes]
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("PASS", "FAIL", "XFAIL")}
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['XFAIL']} expected failures "
                 f"in {seconds:.0f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
