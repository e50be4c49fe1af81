"""A local S3 sandbox: moto's server on 127.0.0.1 with a faithful, scaled-down replica of the
Visual Behavior Ophys bucket, so anyone can try vbo-mirror (and the tests can run) without AWS."""

from .replica import Replica, ReplicaSpec, build_replica
from .server import Sandbox, MotoServer

__all__ = ["MotoServer", "Replica", "ReplicaSpec", "Sandbox", "build_replica"]
