"""What each error kind makes happen, driven through the real retry helper and the real
engine (a scripted remote raises the error: the fault must be exact), and the mapping from
HTTP answers to error kinds."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from fakes import ScriptedRemote

from mirror.policy import Pacer, RetryPolicy, call_with_retries
from mirror.errors import (AccessDenied, Action, ConfigError, EndpointUnreachable, InputError, IntegrityError,
                           LockHeldError, ManifestError, ObjectChanged, ObjectNotFound, OfflineError,
                           ProtocolError, RequestRejected, ServerError, SlowDown, StoreError, TransferError,
                           ViewBlocked)
from mirror.remote.translate import from_status

RETRIED, ONCE = True, False
SKIP, STOP = Action.SKIP_FILE, Action.STOP_RUN

# The behaviour we promise, kind by kind: retried or not, and what the run does once it is final.
PROMISES = [
    (EndpointUnreachable("no answer"), RETRIED, STOP),  # retried; a dead endpoint then stops the run
    (TransferError("stream broke"), RETRIED, SKIP),
    (ServerError("HTTP 500"), RETRIED, SKIP),
    (SlowDown("HTTP 503"), RETRIED, SKIP),
    (ProtocolError("bad Content-Range"), RETRIED, SKIP),
    (IntegrityError("wrong BLAKE2b"), RETRIED, SKIP),
    (ObjectNotFound("404"), ONCE, SKIP),
    (AccessDenied("403"), ONCE, SKIP),
    (ObjectChanged("412"), ONCE, SKIP),
    (RequestRejected("400"), ONCE, SKIP),
    (ViewBlocked("a directory is in the way"), ONCE, SKIP),
    (StoreError("disk full"), ONCE, STOP),
    (LockHeldError("locked"), ONCE, STOP),
    (OfflineError("offline"), ONCE, STOP),
    (InputError("bad input"), ONCE, STOP),
    (ConfigError("bad config"), ONCE, STOP),
    (ManifestError("m.json", "bad"), ONCE, STOP),
]
IDS = [type(e).__name__ for e, _, _ in PROMISES]


async def _no_sleep(_: float) -> None:
    return None


@pytest.mark.parametrize("error,retried,outcome", PROMISES, ids=IDS)
def test_the_retry_helper_retries_exactly_the_retryable_kinds_and_raises_the_error_itself(error, retried, outcome):
    calls, retries = [], []

    async def fail():
        calls.append(1)
        raise error

    policy = RetryPolicy(attempts=4, base_delay=0.0)
    with pytest.raises(type(error)) as caught:
        asyncio.run(call_with_retries(fail, policy=policy, on_retry=lambda e, n, d: retries.append(n),
                                      sleep=_no_sleep))
    assert caught.value is error  # the same object, type and message kept
    assert len(calls) == (4 if retried else 1)
    assert retries == ([1, 2, 3] if retried else [])
    assert caught.value.outcome is outcome


def test_attempts_that_make_progress_do_not_use_up_the_retry_budget():
    """A resumable transfer that gets some bytes before each break keeps going; one that
    gets nothing stops after `attempts` tries."""
    progress = [True] * 9 + [False] * 3  # nine breaks after progress, then three with none
    calls = []

    async def fail():
        calls.append(1)
        raise TransferError("broke")

    with pytest.raises(TransferError):
        asyncio.run(call_with_retries(fail, policy=RetryPolicy(attempts=3, base_delay=0.0),
                                      progressed=lambda: progress[len(calls) - 1], sleep=_no_sleep))
    # Breaks 1-9 each followed progress (the count restarts at 1); 10 and 11 made none: 2, 3.
    assert len(calls) == 11


def test_a_slowdown_slows_every_request_through_the_pacer():
    pacer = Pacer()
    attempts = []

    async def once_slow():
        attempts.append(pacer.interval)
        if len(attempts) == 1:
            raise SlowDown("503")
        return "ok"

    assert asyncio.run(call_with_retries(once_slow, policy=RetryPolicy(base_delay=0.0), pacer=pacer,
                                         sleep=_no_sleep)) == "ok"
    assert pacer.slowdowns == 1 and attempts[0] == 0.0 and attempts[1] > 0


@pytest.mark.parametrize("error,retried,outcome", PROMISES, ids=IDS)
def test_the_engine_fails_the_file_or_stops_the_run_as_the_error_kind_says(tmp_path, error, retried, outcome):
    from mirror.engine.runner import Engine
    from mirror.engine.transfer import Verify
    from mirror.limits import Limits
    from mirror.model import ObjectRef
    from mirror.plan import Fetch, Plan
    from mirror.store.index import StateIndex
    from mirror.store.layout import CacheLayout
    from mirror.store.facade import Store

    async def script(call, deliver):
        if call.key == "bad":
            raise error

    remote = ScriptedRemote(script, buffers=16)

    def fetch(key: str) -> Fetch:
        return Fetch(hashlib.blake2b(b"x" * 100).hexdigest() if key == "good" else "0" * 128,
                     ObjectRef("b", key, "v1"), 100, None, (f"v/{key}",))

    layout = CacheLayout(tmp_path)
    engine = Engine(store=Store(layout, link_mode="copy"), remote=remote, index=StateIndex(layout),
                    limits=Limits(jobs=1), policy=RetryPolicy(attempts=3, integrity_attempts=1, base_delay=0.0),
                    verify=Verify.MANIFEST)
    plan = Plan(("m",), (fetch("bad"), fetch("good")))
    if outcome is STOP:
        with pytest.raises(type(error)) as caught:
            asyncio.run(engine.run(plan))
        assert caught.value is error
        assert "good" not in remote.keys()  # nothing started after the stop (one worker, bad first)
    else:
        stats = asyncio.run(engine.run(plan))
        assert [(f.key, f.error) for f in stats.failures] == [("bad", error)]
        assert stats.files_done == 1 and (tmp_path / "v" / "good").read_bytes() == b"x" * 100
        assert stats.summary()["failures"][0]["error"] == type(error).__name__
    assert remote.keys().count("bad") == (3 if retried else 1)


@pytest.mark.parametrize("status,code,kind", [
    (404, None, ObjectNotFound), (200, "NoSuchVersion", ObjectNotFound), (403, None, AccessDenied),
    (400, "SignatureDoesNotMatch", AccessDenied), (412, None, ObjectChanged), (412, "PreconditionFailed", ObjectChanged),
    (503, None, SlowDown), (429, None, SlowDown), (503, "SlowDown", SlowDown), (500, None, ServerError),
    (502, None, ServerError), (400, "InvalidArgument", ObjectNotFound), (416, None, RequestRejected),
    (400, None, RequestRejected), (302, None, ProtocolError),
])
def test_http_answers_map_to_error_kinds(status, code, kind):
    err = from_status(status, what="GET s3://b/k", code=code)
    assert type(err) is kind
    assert "GET s3://b/k" in str(err)


def test_a_server_that_drips_a_few_bytes_before_each_break_is_not_retried_forever(tmp_path):
    """Only real progress (a MiB, or the rest of the part) forgives earlier failures."""
    from mirror.engine.runner import Engine
    from mirror.engine.transfer import Verify
    from mirror.limits import Limits
    from mirror.model import ObjectRef
    from mirror.plan import Fetch, Plan
    from mirror.store.facade import Store
    from mirror.store.index import StateIndex
    from mirror.store.layout import CacheLayout

    async def script(call, deliver):
        deliver(b"x" * 10)  # ten bytes, then the connection breaks
        raise TransferError("broke after 10 bytes")

    remote = ScriptedRemote(script, buffers=16)

    layout = CacheLayout(tmp_path)
    engine = Engine(store=Store(layout, link_mode="copy"), remote=remote, index=StateIndex(layout),
                    limits=Limits(jobs=1), policy=RetryPolicy(attempts=4, base_delay=0.0), verify=Verify.NONE)
    size = 8 << 20
    stats = asyncio.run(engine.run(Plan(("m",), (Fetch("a" * 128, ObjectRef("b", "k", "v"), size, None, ("v/k",)),))))
    assert [type(f.error) for f in stats.failures] == [TransferError]
    assert [c.start for c in remote.calls] == [0, 10, 20, 30]  # each resumed where the last stopped; four in all
