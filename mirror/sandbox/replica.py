"""A deterministic, scaled-down replica of the Visual Behavior Ophys release.

It keeps the relationships that matter to a mirror:
  v0.1.0 → v0.2.0 → v0.3.0  change only metadata tables;
  v1.0.0                    keeps the old NWB versions, adds sessions, experiments and
                            `ophys_cells_table`;
  v1.0.1                    changes metadata only;
  v1.1.0                    replaces every NWB (new content, new S3 versions, same keys).
Ids, file_ids and metadata columns are consistent across tables, and NWB payloads are sized
like the real ones times `scale`. The same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

from ..semver import Version

BUCKET = "visual-behavior-ophys-data"
REGION = "us-west-2"
PROJECT = "visual-behavior-ophys"
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "1.0.0", "1.0.1", "1.1.0")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Real sizes (bytes) of the NWB files, from the release notes.
BEHAVIOR_NWB = (49_000_000, 194_000_000)
OPHYS_NWB = (231_000_000, 2_960_000_000)


@dataclass(frozen=True)
class ReplicaSpec:
    seed: int = 20210322
    scale: float = 1 / 1000  # NWB sizes relative to the real ones
    behavior_sessions: int = 10  # behavior-only sessions (with an NWB of their own) in v0.x
    ophys_sessions: int = 3  # each with `experiments_per_session` ophys experiment NWBs
    experiments_per_session: int = 2
    added_behavior_sessions: int = 4  # added in v1.0.0
    added_ophys_sessions: int = 2
    part_size: int = 256 << 10  # upload part size for multipart objects (their ETag is `-N`)
    multipart_threshold: int = 512 << 10


@dataclass
class ReplicaFile:
    key: str
    size: int
    seed: int  # payload = payload(seed, size)
    generation: int  # 0 for the original NWBs, 1 for the v1.1.0 replacements
    kind: str  # "behavior" or "ophys"
    file_id: int


@dataclass
class Replica:
    """What was generated; `manifests` are filled with version ids by the loader. The class
    attributes say which release it replicates (Visual Behavior Ophys here; a subclass per
    other dataset, e.g. sandbox/neuropixels.py)."""

    bucket = BUCKET
    region = REGION
    project = PROJECT
    versions = VERSIONS
    title = "Visual Behavior Ophys"

    spec: ReplicaSpec
    tables: dict[str, dict[str, bytes]] = field(default_factory=dict)  # version → table → CSV
    data: dict[str, dict[int, ReplicaFile]] = field(default_factory=dict)  # version → file_id → file
    manifests: dict[str, bytes] = field(default_factory=dict)  # manifest name → JSON bytes
    behavior_ids: dict[str, list[int]] = field(default_factory=dict)  # version → ids with a file
    experiment_ids: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def manifest_name(cls, version: str) -> str:
        return f"{cls.project}_project_manifest_v{version}.json"

    @classmethod
    def url(cls, key: str) -> str:
        return f"https://{cls.bucket}.s3.{cls.region}.amazonaws.com/{key}"

    def total_bytes(self, version: str) -> int:
        return sum(f.size for f in self.data[version].values()) + sum(len(t) for t in self.tables[version].values())


def payload(seed: int, size: int) -> bytes:
    """The bytes of one replica NWB: an HDF5 signature, then seeded random bytes."""
    body = random.Random(seed).randbytes(max(0, size - len(HDF5_MAGIC)))
    return (HDF5_MAGIC + body)[:size]


def blake2b_hex(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()


_CRE = [("Slc17a7-IRES2-Cre", "Slc17a7-IRES2-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt", "GCaMP6f"),
        ("Sst-IRES-Cre", "Sst-IRES-Cre/wt;Ai148(TIT2L-GC6f-ICL-tTA2)/wt", "GCaMP6f"),
        ("Vip-IRES-Cre", "Vip-IRES-Cre/wt;Ai148(TIT2L-GC6f-ICL-tTA2)/wt", "GCaMP6f")]
_SESSION_TYPES = ["TRAINING_1_gratings", "TRAINING_3_images_A_10uL_reward", "OPHYS_1_images_A",
                  "OPHYS_3_images_A", "OPHYS_4_images_B", "OPHYS_6_images_B"]
_EQUIP = ["CAM2P.3", "CAM2P.4", "MESO.1"]
_STRUCT = ["VISp", "VISl"]
_LEVELS = ["Familiar", "Novel 1", "Novel >1"]


def build_replica(spec: ReplicaSpec = ReplicaSpec()) -> Replica:
    rng = random.Random(spec.seed)
    rep = Replica(spec)
    ids = rng.sample(range(800_000_000, 1_100_000_000), 2000)
    # The ids the README's examples use (real ones) are the first behavior session's and the
    # first ophys experiment's here, so every command there runs against the sandbox as written.
    # Placed without drawing from the random stream: the data files stay what they were.
    first_experiment = spec.behavior_sessions + 2  # after the behavior sessions, then a session's two ids
    for slot, wanted in ((0, README_BEHAVIOR_SESSION), (first_experiment, README_OPHYS_EXPERIMENT)):
        if wanted in ids:
            ids[ids.index(wanted)] = ids[slot]
        ids[slot] = wanted
    it = iter(ids)
    next_file_id = iter(range(1, 100_000))

    def sized(lo_hi: tuple[int, int], log: bool) -> int:
        lo, hi = lo_hi
        v = (lo * (hi / lo) ** rng.random()) if log else rng.uniform(lo, hi)
        return max(1024, int(v * spec.scale))

    # Subjects and sessions. Every session row is a dict of columns; a generation counter
    # changes content for v1.1.0.
    behavior_rows: list[dict] = []
    ophys_session_rows: list[dict] = []
    experiment_rows: list[dict] = []
    files: dict[int, ReplicaFile] = {}
    cells: list[dict] = []

    def subject() -> dict:
        cre, genotype, indicator = rng.choice(_CRE)
        return {"mouse_id": str(rng.randint(400_000, 600_000)), "cre_line": cre, "full_genotype": genotype,
                "indicator": indicator, "driver_line": f"['{cre}']", "reporter_line": "Ai93(TITL-GCaMP6f)",
                "sex": rng.choice("MF"), "project_code": rng.choice(["VisualBehavior", "VisualBehaviorMultiscope"])}

    def session(release: str, with_ophys: bool) -> None:
        subj = subject()
        bsid = next(it)
        stype = rng.choice(_SESSION_TYPES[2:] if with_ophys else _SESSION_TYPES)
        common = {**subj, "age_in_days": rng.randint(90, 250), "session_type": stype,
                  "session_number": int(stype.split("_")[1]) if stype.startswith("OPHYS") else None,
                  "image_set": stype.split("_")[-1] if "images" in stype else None,
                  "behavior_type": "active_behavior", "experience_level": rng.choice(_LEVELS),
                  "prior_exposures_to_session_type": rng.randint(0, 5), "prior_exposures_to_image_set": rng.randint(0, 20),
                  "prior_exposures_to_omissions": rng.randint(0, 3),
                  "date_of_acquisition": f"2019-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(8, 17):02d}:{rng.randint(0, 59):02d}:00.000000+00:00",
                  "equipment_name": rng.choice(_EQUIP), "passive": "passive" in stype.lower() or bsid % 10 == 0,
                  "release": release}
        if not with_ophys:
            fid = next(next_file_id)
            files[fid] = ReplicaFile(f"{PROJECT}/behavior_sessions/behavior_session_{bsid}.nwb",
                                     sized(BEHAVIOR_NWB, False), rng.getrandbits(63), 0, "behavior", fid)
            behavior_rows.append({"behavior_session_id": bsid, "ophys_session_id": None, "ophys_container_id": None,
                                  **common, "ophys_experiment_id": None, "file_id": fid})
            return
        osid = next(it)
        exps = [next(it) for _ in range(spec.experiments_per_session)]
        containers = [next(it) for _ in exps]
        behavior_rows.append({"behavior_session_id": bsid, "ophys_session_id": osid,
                              "ophys_container_id": str(containers), **common,
                              "ophys_experiment_id": str(exps), "file_id": None})
        ophys_session_rows.append({"ophys_session_id": osid, "behavior_session_id": bsid,
                                   "ophys_container_id": str(containers), **common,
                                   "ophys_experiment_id": str(exps)})
        for depth_i, (eid, cid) in enumerate(zip(exps, containers)):
            fid = next(next_file_id)
            files[fid] = ReplicaFile(f"{PROJECT}/behavior_ophys_experiments/behavior_ophys_experiment_{eid}.nwb",
                                     sized(OPHYS_NWB, True), rng.getrandbits(63), 0, "ophys", fid)
            experiment_rows.append({"ophys_experiment_id": eid, "behavior_session_id": bsid, "ophys_session_id": osid,
                                    "ophys_container_id": cid, **common, "imaging_depth": 175 + 75 * depth_i,
                                    "targeted_structure": rng.choice(_STRUCT),
                                    # an id that some rows lack: pandas writes the column as floats
                                    # (derived from the id: the replica's random stream, and so its
                                    # data files, stay what they were)
                                    "isi_experiment_id": None if eid % 10 < 3 else eid // 3 + 17,
                                    "file_id": fid})
            for _ in range(rng.randint(3, 8)):
                cells.append({"cell_roi_id": next(it),
                              "cell_specimen_id": rng.randint(1_080_000_000, 1_090_000_000),
                              "ophys_experiment_id": eid, "release": release})

    for _ in range(spec.behavior_sessions):
        session("0", False)
    for _ in range(spec.ophys_sessions):
        session("0", True)
    for _ in range(spec.added_behavior_sessions):
        session("1", False)
    for _ in range(spec.added_ophys_sessions):
        session("1", True)

    _readme_selection(behavior_rows, ophys_session_rows, experiment_rows)
    replaced = {fid: ReplicaFile(f.key, max(1024, int(f.size * rng.uniform(0.97, 1.05))), rng.getrandbits(63), 1, f.kind, fid)
                for fid, f in files.items()}

    for version in VERSIONS:
        major = version.startswith("1.")
        keep = (lambda r: True) if major else (lambda r: r["release"] == "0")
        b = [dict(r) for r in behavior_rows if keep(r)]
        s = [dict(r) for r in ophys_session_rows if keep(r)]
        e = [dict(r) for r in experiment_rows if keep(r)]
        c = [dict(r) for r in cells if keep(r)]
        # Metadata-only revisions, as in the real history.
        if Version(version) >= Version("0.2.0"):
            for r in (*b, *s, *e):
                r["prior_exposures_to_image_set"] = r["prior_exposures_to_image_set"] + 1
        if Version(version) >= Version("0.3.0"):
            for r in (*b, *s, *e):
                r["prior_exposures_to_omissions"] = max(0, r["prior_exposures_to_omissions"] - 1)
        if Version(version) >= Version("1.0.1"):
            for r in c:
                r["cell_specimen_id"] = r["cell_specimen_id"] + 1
        if Version(version) >= Version("1.1.0"):
            for r in (*b, *s, *e):
                r["date_of_acquisition"] = r["date_of_acquisition"].replace(".000000", ".000001")
        tables = {
            "behavior_session_table": _csv(b, exclude=("release",)),
            "ophys_session_table": _csv(s, exclude=("release",)),
            "ophys_experiment_table": _csv(e, exclude=("release",)),
        }
        if major:
            tables["ophys_cells_table"] = _csv(c, exclude=("release",))
        rep.tables[version] = tables
        src = replaced if version == "1.1.0" else files
        wanted = {r["file_id"] for r in b if r["file_id"] is not None} | {r["file_id"] for r in e}
        rep.data[version] = {fid: src[fid] for fid in sorted(wanted)}
        rep.behavior_ids[version] = [r["behavior_session_id"] for r in b if r["file_id"] is not None]
        rep.experiment_ids[version] = [r["ophys_experiment_id"] for r in e]
    return rep


README_BEHAVIOR_SESSION = 870987812
README_OPHYS_EXPERIMENT = 951980471


def _readme_selection(behavior_rows: list[dict], session_rows: list[dict], experiment_rows: list[dict]) -> None:
    """The first ophys session is an Sst-IRES-Cre mouse's OPHYS_1 session, so the README's
    `--where` (cre_line == "Sst-IRES-Cre" and session_type.startswith("OPHYS_1")) selects it.
    Table values only: nothing is drawn from the random stream."""
    cre, genotype, indicator = _CRE[1]
    first = session_rows[0]["ophys_session_id"]
    for row in (*behavior_rows, *session_rows, *experiment_rows):
        if row.get("ophys_session_id") == first:
            row.update(cre_line=cre, full_genotype=genotype, indicator=indicator, driver_line=f"['{cre}']",
                       session_type="OPHYS_1_images_A", session_number=1, image_set="A")


def _csv(rows: list[dict], *, exclude: tuple[str, ...]) -> bytes:
    """The table as pandas writes it (AllenSDK's tables were written by pandas): an integer
    column with a missing value becomes floats (`951410079.0`) and empty cells, booleans
    `True`/`False`, lists as quoted text; so the tests meet the CSVs users meet."""
    import pandas as pd

    if not rows:
        return b""
    cols = [k for k in rows[0] if k not in exclude]
    return pd.DataFrame([{k: r.get(k) for k in cols} for r in rows], columns=cols).to_csv(
        index=False, lineterminator="\n").encode()


def manifest_doc(version: str, metadata: dict[str, tuple[str, str, str]], data: dict[str, tuple[str, str, str]],
                 replica: type[Replica] = Replica) -> bytes:
    """A manifest in the real format; entries are (key, version_id, blake2b)."""

    def entry(key: str, vid: str, h: str) -> dict:
        return {"url": replica.url(key), "version_id": vid, "file_hash": h}

    doc = {
        "project_name": replica.project,
        "manifest_version": version,
        "metadata_file_id_column_name": "file_id",
        "data_pipeline": [{"name": "AllenSDK", "version": "2.13.%d" % replica.versions.index(version),
                           "comment": "AllenSDK version used to produce the data NWB and metadata CSV files for this release"}],
        "metadata_files": {name: entry(*t) for name, t in sorted(metadata.items())},
        "data_files": {fid: entry(*t) for fid, t in sorted(data.items(), key=lambda kv: int(kv[0]))},
    }
    return json.dumps(doc, indent=4).encode()
