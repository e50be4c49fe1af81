"""A deterministic, scaled-down replica of the Visual Behavior Neuropixels (VBN) release.

What AllenSDK 2.16.2's VisualBehaviorNeuropixelsProjectCache reads, as the real release has it:
five tables under `project_metadata/` (ecephys_sessions, behavior_sessions, probes, channels,
units; the real column names and order), and three kinds of NWB:

    behavior_ecephys_sessions/<ecephys_session_id>/ecephys_session_<ecephys_session_id>.nwb
    behavior_ecephys_sessions/<ecephys_session_id>/probe_<probe name>_lfp.nwb   (probes with LFP)
    behavior_only_sessions/<behavior_session_id>/behavior_session_<behavior_session_id>.nwb

Rows reach their file through `file_id`, and -999 (AllenSDK's dummy) means none of its own: a
behavior session that is an ecephys session's (AllenSDK reads it from the ecephys NWB), a probe
without LFP. file_ids are numbered as the release's FileIDGenerator did: LFP probes, then
ecephys sessions, then behavior-only sessions.

The versions keep the relationships that matter to a mirror (the real v0.1.0-v0.5.0 differ in
ways the release notes only partly tell):
  v0.1.0 → v0.2.0   metadata only (units revised);
  v0.3.0            adds ecephys sessions (with their probes' LFP) and behavior-only sessions;
  v0.4.0            replaces every ecephys session NWB (new content, same keys); LFP NWBs and
                    behavior-only NWBs keep their bytes, so they are shared between versions;
  v0.5.0            metadata only: units gain `quality` (as the real v0.5.0's did).
NWB payloads are sized like the real ones times `scale`; the same seed gives the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .replica import Replica, ReplicaFile, ReplicaSpec, _csv

BUCKET = "visual-behavior-neuropixels-data"
REGION = "us-west-2"
PROJECT = "visual-behavior-neuropixels"
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0")
NO_FILE = -999  # AllenSDK's FileIDGenerator.dummy_value

# Real sizes (bytes): session NWBs 2.3-3.2 GB, a probe's LFP NWB ~3-5 GB, behavior-only ~190 MB.
ECEPHYS_NWB = (2_300_000_000, 3_200_000_000)
LFP_NWB = (3_000_000_000, 5_000_000_000)
BEHAVIOR_NWB = (150_000_000, 230_000_000)

# The ids of the README's examples (real ones): the first ecephys session and its behavior session.
README_ECEPHYS_SESSION = 1044385384
README_BEHAVIOR_SESSION = 1044408432

ECEPHYS_SESSION_COLUMNS = [
    "ecephys_session_id", "behavior_session_id", "date_of_acquisition", "equipment_name", "session_type",
    "mouse_id", "genotype", "sex", "project_code", "age_in_days", "unit_count", "probe_count", "channel_count",
    "structure_acronyms", "image_set", "prior_exposures_to_image_set", "session_number", "experience_level",
    "prior_exposures_to_omissions", "file_id", "abnormal_histology", "abnormal_activity"]
BEHAVIOR_SESSION_COLUMNS = [
    "behavior_session_id", "equipment_name", "genotype", "mouse_id", "sex", "age_in_days", "session_number",
    "prior_exposures_to_session_type", "prior_exposures_to_image_set", "prior_exposures_to_omissions",
    "ecephys_session_id", "date_of_acquisition", "session_type", "image_set", "file_id"]
PROBE_COLUMNS = [
    "ecephys_probe_id", "ecephys_session_id", "name", "sampling_rate", "lfp_sampling_rate", "phase",
    "has_lfp_data", "unit_count", "channel_count", "structure_acronyms", "file_id"]
CHANNEL_COLUMNS = [
    "ecephys_channel_id", "ecephys_probe_id", "ecephys_session_id", "probe_channel_number",
    "probe_vertical_position", "probe_horizontal_position", "anterior_posterior_ccf_coordinate",
    "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate", "structure_acronym", "unit_count", "valid_data"]
UNIT_COLUMNS = [  # v0.5.0's; earlier versions lack "quality"
    "unit_id", "ecephys_channel_id", "ecephys_probe_id", "ecephys_session_id", "amplitude_cutoff",
    "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate",
    "cumulative_drift", "d_prime", "structure_acronym", "structure_id", "firing_rate", "isi_violations",
    "isolation_distance", "l_ratio", "local_index", "max_drift", "nn_hit_rate", "nn_miss_rate", "presence_ratio",
    "probe_horizontal_position", "probe_vertical_position", "silhouette_score", "snr", "quality", "valid_data",
    "amplitude", "waveform_duration", "waveform_halfwidth", "PT_ratio", "recovery_slope", "repolarization_slope",
    "spread", "velocity_above", "velocity_below"]

_GENOTYPES = ["wt/wt", "Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt", "Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"]
_STRUCTURES = ["CA1", "CA3", "DG", "LP", "VISp", "VISl", "VISal", "MRN", "APN", "root"]
_PROBES = ["probeA", "probeB", "probeC", "probeD", "probeE", "probeF"]


@dataclass(frozen=True)
class NeuropixelsSpec:
    """How big the replica is (ReplicaSpec gives seed, scale and the upload part sizes)."""

    ecephys_sessions: int = 3  # in v0.1.0
    added_ecephys_sessions: int = 1  # in v0.3.0
    probes_per_session: int = 3  # the last has no LFP data (as ~4 % of real probes)
    behavior_only_sessions: int = 4
    added_behavior_only_sessions: int = 2
    channels_per_probe: int = 4
    units_per_probe: int = 3


@dataclass
class NeuropixelsReplica(Replica):
    bucket = BUCKET
    region = REGION
    project = PROJECT
    versions = VERSIONS
    title = "Visual Behavior Neuropixels"

    ecephys_ids: dict[str, list[int]] = field(default_factory=dict)  # version → ecephys sessions
    lfp_probe_ids: dict[str, list[int]] = field(default_factory=dict)  # version → probes with an LFP NWB
    behavior_only_ids: dict[str, list[int]] = field(default_factory=dict)  # version → behavior sessions with a file


def build_neuropixels_replica(spec: ReplicaSpec = ReplicaSpec(), shape: NeuropixelsSpec = NeuropixelsSpec()
                              ) -> NeuropixelsReplica:
    rng = random.Random(spec.seed ^ 0x5EB)
    rep = NeuropixelsReplica(spec)
    ids = iter([README_ECEPHYS_SESSION, README_BEHAVIOR_SESSION]
               + rng.sample(range(1_040_000_000, 1_200_000_000), 200))
    probe_id, channel_id, unit_id = iter(range(1_044_506_931, 1_044_600_000)), \
        iter(range(1_049_365_502, 1_049_900_000, 2)), iter(range(1_157_005_703, 1_158_000_000, 3))

    def sized(lo_hi: tuple[int, int]) -> int:
        return max(1024, int(rng.uniform(*lo_hi) * spec.scale))

    sessions: list[dict] = []  # one per ecephys session, with its probes, channels, units
    behavior_only: list[dict] = []

    def ecephys_session(release: int) -> None:
        esid, bsid = next(ids), next(ids)
        number = len(sessions) % 2 + 1
        image_set = "G" if number == 1 else "H"
        s = {"esid": esid, "bsid": bsid, "release": release, "mouse_id": rng.randint(500_000, 600_000),
             "genotype": rng.choice(_GENOTYPES), "sex": rng.choice("MF"), "age": rng.randint(120, 200),
             "equipment": rng.choice(["NP.0", "NP.1", "NP.3"]), "number": number, "image_set": image_set,
             "experience_level": "Familiar" if number == 1 else "Novel",
             "date": f"2020-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                     f"{rng.randint(8, 17):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
                     f"{rng.randint(0, 999):03d}000+00:00",
             # about a third of the real sessions are flagged: AllenSDK's table leaves them out by default
             "abnormal_histology": "['Thalamus']" if len(sessions) == 1 else None,
             "abnormal_activity": "[8899]" if len(sessions) == 1 else None,
             "nwb": sized(ECEPHYS_NWB), "nwb_seed": rng.getrandbits(63),
             "nwb2": sized(ECEPHYS_NWB), "nwb2_seed": rng.getrandbits(63), "probes": []}
        for p in range(shape.probes_per_session):
            lfp = p < shape.probes_per_session - 1
            pid = next(probe_id)
            probe = {"ecephys_probe_id": pid, "ecephys_session_id": esid, "name": _PROBES[p],
                     "sampling_rate": round(30000 + rng.uniform(-0.2, 0.2), 6),
                     "lfp_sampling_rate": round(2500 + rng.uniform(-0.02, 0.02), 6), "phase": 1.0,
                     "has_lfp_data": lfp, "lfp": (sized(LFP_NWB), rng.getrandbits(63)) if lfp else None,
                     "channels": [], "units": []}
            for ch in range(shape.channels_per_probe):
                probe["channels"].append({
                    "ecephys_channel_id": next(channel_id), "ecephys_probe_id": pid, "ecephys_session_id": esid,
                    "probe_channel_number": ch, "probe_vertical_position": 20.0 * (ch // 2 + 1),
                    "probe_horizontal_position": [43.0, 11.0, 59.0, 27.0][ch % 4],
                    "anterior_posterior_ccf_coordinate": round(rng.uniform(7000, 9500), 1),
                    "dorsal_ventral_ccf_coordinate": round(rng.uniform(3000, 5000), 1),
                    "left_right_ccf_coordinate": round(rng.uniform(6000, 8000), 1),
                    "structure_acronym": rng.choice(_STRUCTURES), "unit_count": 0, "valid_data": True})
            for k in range(shape.units_per_probe):
                ch = probe["channels"][k % len(probe["channels"])]
                ch["unit_count"] += 1
                probe["units"].append({
                    "unit_id": next(unit_id), "ecephys_channel_id": ch["ecephys_channel_id"], "ecephys_probe_id": pid,
                    "ecephys_session_id": esid, "amplitude_cutoff": round(rng.uniform(0, 0.5), 6),
                    "anterior_posterior_ccf_coordinate": ch["anterior_posterior_ccf_coordinate"],
                    "dorsal_ventral_ccf_coordinate": ch["dorsal_ventral_ccf_coordinate"],
                    "left_right_ccf_coordinate": ch["left_right_ccf_coordinate"],
                    "cumulative_drift": round(rng.uniform(50, 300), 2), "d_prime": round(rng.uniform(2, 7), 6),
                    "structure_acronym": ch["structure_acronym"], "structure_id": rng.randint(100, 1100),
                    "firing_rate": round(rng.uniform(0.1, 30), 6), "isi_violations": round(rng.uniform(0, 1), 6),
                    "isolation_distance": round(rng.uniform(10, 100), 6), "l_ratio": round(rng.uniform(0, 0.1), 6),
                    "local_index": k, "max_drift": round(rng.uniform(10, 60), 2),
                    "nn_hit_rate": round(rng.uniform(0.5, 1), 6), "nn_miss_rate": round(rng.uniform(0, 0.02), 6),
                    "presence_ratio": round(rng.uniform(0.8, 1), 2),
                    "probe_horizontal_position": ch["probe_horizontal_position"],
                    "probe_vertical_position": ch["probe_vertical_position"],
                    "silhouette_score": round(rng.uniform(0, 0.3), 6) if k else None,  # NaN in some real rows
                    "snr": round(rng.uniform(1, 5), 6), "quality": "good" if k % 3 != 2 else "noise",
                    "valid_data": True, "amplitude": round(rng.uniform(100, 600), 6),
                    "waveform_duration": round(rng.uniform(0.1, 0.6), 6),
                    "waveform_halfwidth": round(rng.uniform(0.09, 0.3), 6), "PT_ratio": round(rng.uniform(0.3, 0.7), 6),
                    "recovery_slope": round(rng.uniform(-0.4, 0), 6),
                    "repolarization_slope": round(rng.uniform(0.5, 2.5), 6),
                    "spread": float(rng.choice([20, 30, 40, 70, 80])), "velocity_above": round(rng.uniform(-0.5, 2), 6),
                    "velocity_below": round(rng.uniform(-2, 1), 6) if k else None})
            s["probes"].append(probe)
        sessions.append(s)

    def behavior_session(release: int) -> None:
        bsid = next(ids)
        mouse = sessions[len(behavior_only) % len(sessions)]
        behavior_only.append({
            "behavior_session_id": bsid, "release": release, "equipment_name": rng.choice(["BEH.G-Box2", "BEH.D-Box4"]),
            "genotype": mouse["genotype"], "mouse_id": mouse["mouse_id"], "sex": mouse["sex"],
            "age_in_days": mouse["age"] - rng.randint(10, 60), "session_number": len(behavior_only) + 1,
            "prior_exposures_to_session_type": rng.randint(0, 5),
            # empty for gratings sessions, as in the real table
            "prior_exposures_to_image_set": None if len(behavior_only) % 3 == 0 else rng.randint(0, 30),
            "prior_exposures_to_omissions": rng.randint(0, 3), "ecephys_session_id": None,
            "date_of_acquisition": f"2020-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                                   f"{rng.randint(8, 17):02d}:{rng.randint(0, 59):02d}:00.000000+00:00",
            "session_type": "TRAINING_0_gratings_autorewards_15min_0uL_reward" if len(behavior_only) % 3 == 0
            else "TRAINING_5_images_G_handoff_3uL_reward",
            "image_set": None if len(behavior_only) % 3 == 0 else "G",
            "nwb": sized(BEHAVIOR_NWB), "nwb_seed": rng.getrandbits(63)})

    for _ in range(shape.ecephys_sessions):
        ecephys_session(0)
    for _ in range(shape.behavior_only_sessions):
        behavior_session(0)
    for _ in range(shape.added_ecephys_sessions):
        ecephys_session(1)
    for _ in range(shape.added_behavior_only_sessions):
        behavior_session(1)
    unit_revision = {u["unit_id"]: round(rng.uniform(0.8, 1.2), 3)
                     for s in sessions for p in s["probes"] for u in p["units"]}

    # file_ids as the release numbered them: LFP probes, ecephys sessions, behavior-only sessions
    file_ids = iter(range(0, 100_000))
    lfp_fid = {p["ecephys_probe_id"]: next(file_ids) for s in sessions for p in s["probes"] if p["lfp"]}
    session_fid = {s["esid"]: next(file_ids) for s in sessions}
    behavior_fid = {b["behavior_session_id"]: next(file_ids) for b in behavior_only}
    files: dict[int, ReplicaFile] = {}
    replaced: dict[int, ReplicaFile] = {}
    for s in sessions:
        key = f"{PROJECT}/behavior_ecephys_sessions/{s['esid']}/ecephys_session_{s['esid']}.nwb"
        fid = session_fid[s["esid"]]
        files[fid] = ReplicaFile(key, s["nwb"], s["nwb_seed"], 0, "ecephys", fid)
        replaced[fid] = ReplicaFile(key, s["nwb2"], s["nwb2_seed"], 1, "ecephys", fid)
        for p in s["probes"]:
            if p["lfp"]:
                fid = lfp_fid[p["ecephys_probe_id"]]
                files[fid] = ReplicaFile(f"{PROJECT}/behavior_ecephys_sessions/{s['esid']}/probe_{p['name']}_lfp.nwb",
                                         p["lfp"][0], p["lfp"][1], 0, "lfp", fid)
    for b in behavior_only:
        fid = behavior_fid[b["behavior_session_id"]]
        files[fid] = ReplicaFile(f"{PROJECT}/behavior_only_sessions/{b['behavior_session_id']}/"
                                 f"behavior_session_{b['behavior_session_id']}.nwb", b["nwb"], b["nwb_seed"], 0,
                                 "behavior", fid)

    for version in VERSIONS:
        release = 0 if version < "0.3.0" else 1
        ss = [s for s in sessions if s["release"] <= release]
        bs = [b for b in behavior_only if b["release"] <= release]
        probes = [p for s in ss for p in s["probes"]]
        probe_rows = [{**{c: p[c] for c in PROBE_COLUMNS if c in p},
                       "unit_count": len(p["units"]), "channel_count": len(p["channels"]),
                       "structure_acronyms": str(sorted({c["structure_acronym"] for c in p["channels"]})),
                       "file_id": lfp_fid[p["ecephys_probe_id"]] if p["lfp"] else NO_FILE} for p in probes]
        # the writer put the probes with LFP first, then those without
        probe_rows = [r for r in probe_rows if r["has_lfp_data"]] + [r for r in probe_rows if not r["has_lfp_data"]]
        channel_rows = [c for p in probes for c in p["channels"]]
        unit_rows = []
        for p in probes:
            for u in p["units"]:
                row = dict(u)
                if version >= "0.2.0":  # the metadata-only revision
                    row["firing_rate"] = round(row["firing_rate"] * unit_revision[u["unit_id"]], 6)
                unit_rows.append(row)
        ecephys_rows = []
        for s in ss:
            ecephys_rows.append({
                "ecephys_session_id": s["esid"], "behavior_session_id": s["bsid"], "date_of_acquisition": s["date"],
                "equipment_name": s["equipment"], "session_type": f"EPHYS_{s['number']}_images_{s['image_set']}_3uL_reward",
                "mouse_id": s["mouse_id"], "genotype": s["genotype"], "sex": s["sex"],
                "project_code": "NeuropixelVisualBehavior", "age_in_days": s["age"],
                "unit_count": sum(len(p["units"]) for p in s["probes"]), "probe_count": len(s["probes"]),
                "channel_count": sum(len(p["channels"]) for p in s["probes"]),
                "structure_acronyms": str(sorted({c["structure_acronym"] for p in s["probes"] for c in p["channels"]})),
                "image_set": s["image_set"], "prior_exposures_to_image_set": 30 if s["number"] == 1 else 0,
                "session_number": s["number"], "experience_level": s["experience_level"],
                "prior_exposures_to_omissions": s["number"] - 1, "file_id": session_fid[s["esid"]],
                "abnormal_histology": s["abnormal_histology"], "abnormal_activity": s["abnormal_activity"]})
        behavior_rows = [{**{c: b[c] for c in BEHAVIOR_SESSION_COLUMNS if c in b},
                          "file_id": behavior_fid[b["behavior_session_id"]]} for b in bs]
        for s in ss:  # an ecephys session's behavior: read from the ecephys NWB (file_id -999)
            behavior_rows.append({
                "behavior_session_id": s["bsid"], "equipment_name": s["equipment"], "genotype": s["genotype"],
                "mouse_id": s["mouse_id"], "sex": s["sex"], "age_in_days": s["age"], "session_number": 40 + s["number"],
                "prior_exposures_to_session_type": 0, "prior_exposures_to_image_set": 30 if s["number"] == 1 else 0,
                "prior_exposures_to_omissions": s["number"] - 1, "ecephys_session_id": s["esid"],
                "date_of_acquisition": s["date"],
                "session_type": f"EPHYS_{s['number']}_images_{s['image_set']}_3uL_reward",
                "image_set": s["image_set"], "file_id": NO_FILE})
        unit_columns = [c for c in UNIT_COLUMNS if version >= "0.5.0" or c != "quality"]
        rep.tables[version] = {
            "ecephys_sessions": _table(ecephys_rows, ECEPHYS_SESSION_COLUMNS),
            "behavior_sessions": _table(behavior_rows, BEHAVIOR_SESSION_COLUMNS),
            "probes": _table(probe_rows, PROBE_COLUMNS),
            "channels": _table(channel_rows, CHANNEL_COLUMNS),
            "units": _table(unit_rows, unit_columns),
        }
        src = {**files, **(replaced if version >= "0.4.0" else {})}
        wanted = sorted({r["file_id"] for r in (*ecephys_rows, *behavior_rows, *probe_rows)} - {NO_FILE})
        rep.data[version] = {fid: src[fid] for fid in wanted}
        rep.ecephys_ids[version] = [s["esid"] for s in ss]
        rep.lfp_probe_ids[version] = [p["ecephys_probe_id"] for p in probes if p["lfp"]]
        rep.behavior_only_ids[version] = [b["behavior_session_id"] for b in bs]
    return rep


def _table(rows: list[dict], columns: list[str]) -> bytes:
    return _csv([{c: r.get(c) for c in columns} for r in rows], exclude=())
