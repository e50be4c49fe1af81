"""Start moto's S3 server on 127.0.0.1 in a child process and load the replica into it.

moto runs in its own process, not a thread: it holds the GIL while it builds responses, and
a server in a separate process is also what the crash tests need (they kill -9 the client).
moto reads whole objects into memory per GET and copies every version on each listing, so
replicas are kept to tens of MB and clients list once per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from .replica import REGION, Replica, ReplicaSpec, blake2b_hex, manifest_doc, payload
from .replicas import build, builder

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's server as a child process bound to 127.0.0.1; a context manager."""

    def __init__(self, *, port: int = 0, log_path: Path | None = None, detach: bool = False) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.detach = detach
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "MotoServer":
        env = dict(os.environ)
        # Small multipart parts so a scaled-down replica still has real `-N` ETags.
        env.update(S3_UPLOAD_PART_MIN_SIZE="1024", MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(8 << 20),
                   MOTO_ALLOW_NONEXISTENT_REGION="true")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=self.detach,
            )
        finally:
            if self.log_path:
                log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self.proc.returncode} (port {self.port} taken?)")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {timeout:g}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def admin_client(endpoint_url: str):
    """A signed client with dummy credentials: moto accepts any, and uploads must be signed."""
    return get_session().create_client(
        "s3", region_name=REGION, endpoint_url=endpoint_url,
        aws_access_key_id="sandbox", aws_secret_access_key="sandbox",
        config=AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


async def _put(s3, bucket: str, key: str, data: bytes, spec: ReplicaSpec) -> str:
    """Upload `data` as one object version (multipart above the threshold) → its version id."""
    if len(data) <= spec.multipart_threshold:
        r = await s3.put_object(Bucket=bucket, Key=key, Body=data)
        return r["VersionId"]
    up = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for n, off in enumerate(range(0, len(data), spec.part_size), start=1):
        r = await s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                                 Body=data[off:off + spec.part_size])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    r = await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                           MultipartUpload={"Parts": parts})
    return r["VersionId"]


async def create_public_bucket(s3, bucket: str) -> None:
    """A versioned bucket that anonymous clients may read and list, like the real one."""
    policy = {"Version": "2012-10-17", "Statement": [{
        "Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
        "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    await s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    await s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    await s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


async def load_replica(endpoint_url: str, replica: Replica, *, versions=None, pause: float = 0.0) -> Replica:
    """Create the bucket (versioned, anonymous read by policy) and upload every version in
    release order, so the version ids in the manifests are the server's own. `pause` seconds
    between versions give each its own LastModified second: tools that can only pick versions
    by time (rclone's --s3-version-at) can then tell them apart."""
    bucket, project = replica.bucket, replica.project
    async with admin_client(endpoint_url) as s3:
        await create_public_bucket(s3, bucket)
        await s3.put_object(Bucket=bucket, Key=f"{project}/release_notes.txt",
                            Body=f"Scaled-down replica of the {replica.title} release, made by vbo-mirror's sandbox.\n".encode())
        uploaded: dict[tuple[str, int], tuple[str, str]] = {}  # (key, generation) → (version id, hash)
        for version in versions or replica.versions:
            metadata = {}
            for table, body in replica.tables[version].items():
                key = f"{project}/project_metadata/{table}.csv"
                vid = (await s3.put_object(Bucket=bucket, Key=key, Body=body))["VersionId"]
                metadata[table] = (key, vid, blake2b_hex(body))
            data = {}
            for fid, f in replica.data[version].items():
                if (f.key, f.generation) not in uploaded:
                    body = payload(f.seed, f.size)
                    uploaded[(f.key, f.generation)] = (await _put(s3, bucket, f.key, body, replica.spec),
                                                       blake2b_hex(body))
                vid, h = uploaded[(f.key, f.generation)]
                data[str(fid)] = (f.key, vid, h)
            doc = manifest_doc(version, metadata, data, type(replica))
            name = replica.manifest_name(version)
            await s3.put_object(Bucket=bucket, Key=f"{project}/manifests/{name}", Body=doc)
            replica.manifests[name] = doc
            if pause:
                await asyncio.sleep(pause)
    return replica


class Sandbox:
    """moto + the replica, for tests and the demo: `with Sandbox() as sb: sb.url`.
    `dataset`: whose replica (mirror/sandbox/__init__.py: REPLICAS)."""

    def __init__(self, spec: ReplicaSpec = ReplicaSpec(), *, port: int = 0, versions=None,
                 log_path: Path | None = None, detach: bool = False, dataset: str = "visual-behavior-ophys") -> None:
        self.spec = spec
        self.versions = versions
        self.dataset = dataset
        self.server = MotoServer(port=port, log_path=log_path, detach=detach)
        self.replica: Replica | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "Sandbox":
        self.server.start()
        try:
            self.replica = asyncio.run(load_replica(self.url, build(self.dataset, self.spec), versions=self.versions))
        except BaseException:
            self.server.stop()
            raise
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- `vbo-mirror sandbox up/down`: a detached server with a state file ----------------------


def state_dir() -> Path:
    return Path(os.environ.get("VBO_MIRROR_SANDBOX_DIR") or Path(tempfile.gettempdir()) / f"vbo-mirror-sandbox-{os.getuid()}")


@contextlib.contextmanager
def _locked_state():
    """The state directory's lock: two terminals starting or stopping at once take turns."""
    import fcntl

    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield d / "sandbox.json"


def sandbox_up(spec: ReplicaSpec, *, port: int = 0, dataset: str = "visual-behavior-ophys") -> dict:
    """Start the sandbox, or join the one running (it then counts one more user: `down`
    stops it only when its last user leaves, so one terminal does not stop another's). One
    server holds every dataset's bucket: joining with a dataset it does not serve yet loads
    that dataset's replica into it, so one AWS_ENDPOINT_URL_S3 serves them all."""
    builder(dataset)  # an unknown dataset is refused before anything starts
    with _locked_state() as state_file:
        d = state_file.parent
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if _alive(state.get("pid")):
                served = state.setdefault("datasets", {})
                added = dataset not in served
                if added:
                    replica = asyncio.run(load_replica(state["endpoint_url"], build(dataset, spec)))
                    served[dataset] = _served(replica)
                    state["manifests"] = sorted({*state.get("manifests", []), *replica.manifests})
                    state["bytes"] = sum(v["bytes"] for v in served.values())
                state["users"] = state.get("users", 1) + 1
                state_file.write_text(json.dumps(state, indent=2))
                return {**state, "already_running": True, "loaded": dataset if added else None}
        sb = Sandbox(spec, port=port, log_path=d / "moto.log", detach=True, dataset=dataset)
        sb.start()
        served = {dataset: _served(sb.replica)}
        state = {"pid": sb.server.proc.pid, "endpoint_url": sb.url, "port": sb.server.port,
                 "manifests": sorted(sb.replica.manifests), "bytes": served[dataset]["bytes"],
                 "datasets": served, "log": str(d / "moto.log"), "state_dir": str(d), "users": 1}
        state_file.write_text(json.dumps(state, indent=2))
        return state


def _served(replica: Replica) -> dict:
    return {"bucket": replica.bucket, "manifests": sorted(replica.manifests),
            "bytes": sum(replica.total_bytes(v) for v in replica.versions)}


def sandbox_status() -> dict | None:
    state_file = state_dir() / "sandbox.json"
    try:
        state = json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if _alive(state.get("pid")) else None


def sandbox_down(*, force: bool = False) -> dict | None:
    """Leave the sandbox: stop it when this was its last user (or with `force`); otherwise
    say how many others still use it. None: none was running."""
    with _locked_state() as state_file:
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        pid = state.get("pid")
        users = state.get("users", 1)
        if _alive(pid) and users > 1 and not force:
            state["users"] = users - 1
            state_file.write_text(json.dumps(state, indent=2))
            return {**state, "stopped": False}
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        state_file.unlink()
        return {**state, "users": 0, "stopped": True}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours would still answer kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
