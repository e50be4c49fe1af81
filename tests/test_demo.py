"""`make demo` runs the real thing: sandbox up, a real sync, verify, sandbox down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script_runs_a_real_sync_and_stops_the_sandbox(tmp_path):
    env = {**os.environ, "DEMO_DIR": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo done" in r.stdout
    assert "28 files: 24 fetched" in r.stdout  # the first sync of 1.0.1 (its 4 tables were fetched by `tables`)
    assert "28 already present" in r.stdout  # the no-op resync
    assert "\nok\n" in r.stdout  # verify
    cache = tmp_path / "cache"
    nwbs = list((cache / "visual-behavior-ophys-1.1.0").rglob("*.nwb"))
    assert nwbs and all(p.stat().st_size > 0 for p in nwbs)
    assert not (tmp_path / ".sandbox" / "sandbox.json").exists()  # stopped
