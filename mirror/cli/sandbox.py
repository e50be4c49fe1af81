"""`vbo-mirror sandbox up/down/status`: the local S3 server with a replica."""

from __future__ import annotations

import click

from .root import Ctx, handle_errors, human_bytes, InputError, main


# --- sandbox --------------------------------------------------------------------------------


@main.group(short_help="A local S3 server (moto, 127.0.0.1) with a replica.")
def sandbox() -> None:
    """A local S3 server (moto, 127.0.0.1) with a scaled-down replica of the bucket."""


@sandbox.command("up")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--scale", type=float, default=1 / 1000, show_default=True, help="NWB sizes relative to the real ones.")
@click.option("--seed", type=int, default=20210322, show_default=True,
              help="Seed of the generated replica (the same seed gives the same bytes).")
@click.pass_obj
@handle_errors
def sandbox_up_cmd(c: Ctx, port: int, scale: float, seed: int) -> None:
    """Start the sandbox in the background and print its endpoint.

    It serves the replica of the dataset given by --dataset (visual-behavior-ophys by default,
    or visual-behavior-neuropixels). A sandbox already running is joined, and the dataset's
    bucket is added to it if it did not serve it yet: one endpoint serves both."""
    from ..sandbox.replica import ReplicaSpec
    from ..sandbox.server import sandbox_up

    if not 0 < scale <= 0.05:
        raise InputError("--scale must be in (0, 0.05]: moto keeps every object in memory")
    ds = c.dataset_config()
    if ds.sandbox is None:
        raise InputError(f"the dataset {ds.name!r} has no sandbox replica (its dataset file names none: "
                         "`sandbox = \"...\"`)", hint="the sandbox serves visual-behavior-ophys and "
                                                      "visual-behavior-neuropixels")
    state = sandbox_up(ReplicaSpec(seed=seed, scale=scale), port=port, dataset=ds.sandbox)
    joined = (f" (it was already running: now {state['users']} users; `sandbox down` stops it when the last one "
              "leaves)" if state.get("already_running") else "")
    if state.get("loaded"):
        joined += f"; {ds.title} (s3://{ds.bucket}) added to it"
    served = ", ".join(f"s3://{v['bucket']}" for v in state.get("datasets", {}).values())
    c.emit(state, lambda: (f"sandbox {'already ' if state.get('already_running') else ''}running at {state['endpoint_url']} "
                           f"(pid {state['pid']}, {len(state['manifests'])} manifests, {human_bytes(state['bytes'])}"
                           f"{': ' + served if served else ''})"
                           f"{joined}\n"
                           f"  export AWS_ENDPOINT_URL_S3={state['endpoint_url']}\n"
                           f"  its state: {state.get('state_dir', '')} (VBO_MIRROR_SANDBOX_DIR chooses another)\n"
                           "  stop it with: vbo-mirror sandbox down"))


@sandbox.command("down")
@click.option("--force", is_flag=True, help="Stop it even if other `sandbox up` sessions still use it.")
@click.pass_obj
@handle_errors
def sandbox_down_cmd(c: Ctx, force: bool) -> None:
    """Leave the sandbox; the last to leave stops it."""
    from ..sandbox.server import sandbox_down

    state = sandbox_down(force=force)
    if state is None:
        c.emit({"stopped": False, "running": False}, "no sandbox was running")
    elif state["stopped"]:
        c.emit(state, "sandbox stopped")
    else:
        c.emit(state, f"sandbox at {state['endpoint_url']} left running: {state['users']} other `sandbox up` "
                      "still use it (--force stops it anyway)")


@sandbox.command("status")
@click.pass_obj
@handle_errors
def sandbox_status_cmd(c: Ctx) -> None:
    """Whether the sandbox runs, and where."""
    from ..sandbox.server import sandbox_status

    state = sandbox_status()
    c.emit({"running": state is not None, **(state or {})},
           f"sandbox running at {state['endpoint_url']} (pid {state['pid']})" if state else "no sandbox is running")


