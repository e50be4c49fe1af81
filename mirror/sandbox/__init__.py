"""A local S3 sandbox: moto's server on 127.0.0.1 with faithful, scaled-down replicas of the
Allen releases (Visual Behavior Ophys, Visual Behavior Neuropixels), so anyone can try
vbo-mirror (and the tests can run) without AWS.

A replica is code, not data: it generates tables whose ids agree with each other and NWBs sized
like the real ones. A dataset file names its replica (`sandbox = "..."`), a key of REPLICAS.
"""

from .replica import Replica, ReplicaSpec, build_replica
from .server import Sandbox, MotoServer

from .replicas import REPLICAS  # noqa: E402

__all__ = ["MotoServer", "REPLICAS", "Replica", "ReplicaSpec", "Sandbox", "build_replica"]
