"""One small hierarchy of errors; each kind carries its own decisions.

Errors are classified by *what happens next* (rclone's habit), never by matching message
text. Two class attributes say it, and nothing else decides:

- `retry`: the same request may succeed if tried again (with backoff), so it is;
- `outcome`: what the run does once the error is final (not retryable, or its retries ran
  out): `Action.SKIP_FILE` fails this one file and the run goes on; `Action.STOP_RUN` stops
  everything, because nothing else can succeed either (the disk is full, the endpoint is
  dead, the input is bad). A kind that does not say it concerns one file stops the run: the
  conservative default for what nobody foresaw.

Every library error (the HTTP client, botocore, OSError) is translated once, at the boundary
where it is raised (`raise OurError(...) from exc`), so no code above `remote/` and `store/`
knows which library produced it.
"""

from __future__ import annotations

import enum


class Action(enum.Enum):
    """What the run does with an error that is final."""

    SKIP_FILE = "skip-file"
    STOP_RUN = "stop-run"


class MirrorError(Exception):
    """Base of every error vbo-mirror raises on purpose.

    `exit_code` is what the CLI exits with; `hint` is one sentence telling the user what
    to try, printed under the message.
    """

    exit_code = 1
    retry = False
    outcome = Action.STOP_RUN

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


# --- bad input: exit 2, nothing written ---------------------------------------------------


class InputError(MirrorError):
    """The user or a file handed us something we refuse to act on."""

    exit_code = 2


class ConfigError(InputError):
    pass


class ManifestError(InputError):
    """A manifest is malformed or unsafe. The message names the file and the problem."""

    def __init__(self, source: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{source}: {problem}", hint=hint)
        self.source = source
        self.problem = problem


class UnknownVersionError(InputError):
    def __init__(self, version: str, available: list[str]) -> None:
        listing = ", ".join(available) if available else "(none)"
        super().__init__(
            f"unknown dataset version {version!r}; available: {listing}",
            hint="run `vbo-mirror manifests list` to see every version",
        )
        self.version = version
        self.available = available


class UnknownIdError(InputError):
    pass


class NoFileError(UnknownIdError):
    """The row has no file of its own; `fallback_id`: the id of the other kind's item whose
    file it is (its file kind's `fallback`), when there is one."""

    def __init__(self, message: str, *, fallback_id: int | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.fallback_id = fallback_id


# --- offline / local state ----------------------------------------------------------------


class OfflineError(MirrorError):
    """Something needed is neither in cache_dir nor reachable."""

    exit_code = 3


class LockHeldError(MirrorError):
    exit_code = 3


class StoreError(MirrorError):
    """The local disk refused (full, read-only, permissions). Nothing else can succeed."""

    exit_code = 4


# --- remote -------------------------------------------------------------------------------


class RemoteError(MirrorError):
    """Base of everything the S3 / HTTP boundary raises."""

    exit_code = 3
    retry = True
    outcome = Action.SKIP_FILE


class EndpointUnreachable(RemoteError):
    """No answer at all: connection refused, DNS failure, connect timeout. Retried; once the
    retries run out no other file can succeed either, so the run stops."""

    outcome = Action.STOP_RUN


class ProxyUnreachable(EndpointUnreachable):
    """The proxy (HTTPS_PROXY, --proxy, ...) does not answer, or cannot open the tunnel."""


class ProxyAuthRequired(RemoteError):
    """The proxy wants credentials (HTTP 407): no retry can bring them."""

    retry = False
    outcome = Action.STOP_RUN


class WrongRegion(RemoteError):
    """The endpoint the user named says the bucket lives in another region: every request
    would get the same answer, so the run stops with one line naming the region."""

    exit_code = 2
    retry = False
    outcome = Action.STOP_RUN


class Redirected(RemoteError):
    """A redirect that cannot be followed (no Location, a second hop, https to http)."""

    retry = False
    outcome = Action.STOP_RUN


class TransferError(RemoteError):
    """The connection broke mid-response, or a read timed out."""


class ServerError(RemoteError):
    """5xx other than SlowDown."""


class SlowDown(RemoteError):
    """503 SlowDown / 429: the server asks every client to slow down (the pacer reacts)."""


class ObjectNotFound(RemoteError):
    retry = False


class AccessDenied(RemoteError):
    retry = False


class ObjectChanged(RemoteError):
    """412 on If-Match, or a changed ETag: the bytes we hold belong to another object."""

    retry = False


class RequestRejected(RemoteError):
    """A 4xx the request will get again if repeated (bad range, expired token, ...)."""

    retry = False


class ProtocolError(RemoteError):
    """The server answered something we did not ask for (wrong Content-Range, bad length)."""


class IntegrityError(MirrorError):
    """Downloaded bytes do not match the manifest hash or the S3 ETag."""

    exit_code = 5
    retry = True
    outcome = Action.SKIP_FILE


class ViewBlocked(MirrorError):
    """Something of the user's (a directory, a file where a directory belongs) sits where a
    view must go: that one view fails, the run goes on, nothing of theirs is touched."""

    exit_code = 5
    outcome = Action.SKIP_FILE


class Terminated(BaseException):
    """SIGTERM or SIGHUP reached the command (a batch scheduler's kill, a closed terminal): the
    run stops as on Ctrl-C (a BaseException like KeyboardInterrupt, so no `except Exception`
    swallows it), keeping partials and saving the index."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signame}")


# --- warnings: things the user should know that do not stop anything -----------------------


class MirrorWarning(UserWarning):
    pass


class OutdatedManifestWarning(MirrorWarning):
    """The version in use is not the latest one online (AllenSDK's warning of the same name)."""


class OfflineWarning(MirrorWarning):
    """The endpoint did not answer; vbo-mirror carries on from what cache_dir holds."""


class RegionWarning(MirrorWarning):
    """S3 said the bucket is in another region than the dataset file says: followed."""


class LinkFallbackWarning(MirrorWarning):
    """Views cannot be links here; they are copies and cost disk space."""
