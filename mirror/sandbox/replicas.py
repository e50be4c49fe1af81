"""Which replica `sandbox up` serves for a dataset: a dataset file's `sandbox = "..."` names one."""

from __future__ import annotations

from .neuropixels import build_neuropixels_replica
from .replica import Replica, ReplicaSpec, build_replica

REPLICAS = {"visual-behavior-ophys": build_replica, "visual-behavior-neuropixels": build_neuropixels_replica}


def builder(dataset: str):
    """The function that builds `dataset`'s replica; an unknown name is a clear error."""
    try:
        return REPLICAS[dataset]
    except KeyError:
        raise ValueError(f"no sandbox replica of {dataset!r}; there are: {', '.join(sorted(REPLICAS))}") from None


def build(dataset: str, spec: ReplicaSpec) -> Replica:
    """The replica of `dataset` (a name in REPLICAS)."""
    return builder(dataset)(spec)
