"""What the network around us says: proxies (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, ...) and
the CA bundle a TLS-intercepting proxy needs. Read here once, the same for every transport and
every request of a run (GET, HEAD, listings), as curl, aws-cli, s5cmd and rclone read them.

Rules, curl's first where tools differ:

- `https_proxy` / `HTTPS_PROXY` for https URLs, `http_proxy` / `HTTP_PROXY` for http URLs, then
  `all_proxy` / `ALL_PROXY`; the lowercase variable wins when both are set.
- `no_proxy` / `NO_PROXY` (lowercase wins): comma- or space-separated; `*` alone bypasses every
  host; `example.com` and `.example.com` both match the name and every name under it; an IP
  address or CIDR block (`10.0.0.0/8`, `::1`, `[::1]`) matches addresses in it; `host:port`
  matches that port only.
- A proxy URL without a scheme is `http://`; without a port, 1080 (curl's default). User and
  password in it become `Proxy-Authorization: Basic`. Only `http://` proxies are spoken.
- The CA bundle: `AWS_CA_BUNDLE`, then `SSL_CERT_FILE`, then `REQUESTS_CA_BUNDLE`, else the
  system's.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

CA_ENV = ("AWS_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
DEFAULT_PROXY_PORT = 1080


def _input_error():
    from ..errors import InputError

    return InputError


class ProxySettingError(_input_error()):
    """A proxy variable or option that cannot be used; the message names it. From the
    environment it is raised when a request would go through that proxy (a command that
    needs no network, or goes direct by NO_PROXY, is not stopped by an `all_proxy=socks5://`
    meant for other tools); from --proxy / `proxy=`, at once."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    source: str  # where it came from, for messages: "HTTPS_PROXY", "--proxy", ...
    auth: str | None = None  # the Proxy-Authorization value

    @property
    def url(self) -> str:
        """The proxy as users name it, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def key(self) -> tuple[str, int, str | None]:
        return (self.host, self.port, self.auth)


def parse_proxy(value: str, source: str) -> Proxy:
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() != "http":
        raise ProxySettingError(f"{source}={value!r}: only http:// proxies are supported "
                                f"(https:// targets go through them in a CONNECT tunnel)")
    try:
        port = parts.port or DEFAULT_PROXY_PORT
    except ValueError:
        raise ProxySettingError(f"{source}={value!r}: the port is not a number") from None
    if not parts.hostname:
        raise ProxySettingError(f"{source}={value!r}: no host in the proxy URL")
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode("ascii")
    return Proxy(parts.hostname, port, source, auth)


@dataclass(frozen=True)
class NoProxy:
    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[tuple[object, int | None], ...] = ()

    @classmethod
    def parse(cls, value: str) -> "NoProxy":
        names: list[tuple[str, int | None]] = []
        networks: list[tuple[object, int | None]] = []
        for raw in value.replace(",", " ").split():
            entry = raw.strip().lower()
            if entry == "*":
                return cls(everything=True)
            port = None
            if entry.startswith("["):  # [v6] or [v6]:port
                addr, _, rest = entry[1:].partition("]")
                entry = addr
                if rest.startswith(":") and rest[1:].isdigit():
                    port = int(rest[1:])
            elif entry.count(":") == 1:  # name:port or v4:port (a bare v6 has several colons)
                name, _, p = entry.partition(":")
                if p.isdigit():
                    entry, port = name, int(p)
            try:
                networks.append((ipaddress.ip_network(entry, strict=False), port))
                continue
            except ValueError:
                pass
            entry = entry.lstrip(".").rstrip(".")
            if entry:
                names.append((entry, port))
        return cls(False, tuple(names), tuple(networks))

    def bypasses(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".").strip("[]")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = None
        if addr is not None:
            return any(addr in net and (p is None or p == port) for net, p in self.networks)
        return any((host == name or host.endswith("." + name)) and (p is None or p == port)
                   for name, p in self.names)


def _env(*names: str, environ=os.environ) -> tuple[str | None, str | None]:
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip():
            return value, name
    return None, None


@dataclass(frozen=True)
class ProxyConfig:
    """Which proxy (if any) a URL goes through. `explicit` (--proxy, `proxy=`) takes every
    URL the no-proxy list does not bypass; `disabled` (--no-proxy, `proxy=""`) goes direct."""

    https: Proxy | ProxySettingError | None = None
    http: Proxy | ProxySettingError | None = None
    no_proxy: NoProxy = NoProxy()

    @classmethod
    def from_env(cls, environ=os.environ, *, explicit: str | None = None) -> "ProxyConfig":
        """`explicit`: None reads the environment; "" turns proxies off; a URL is used for
        both schemes (NO_PROXY still applies)."""
        no_value, _ = _env("no_proxy", "NO_PROXY", environ=environ)
        no_proxy = NoProxy.parse(no_value or "")
        if explicit is not None:
            if not explicit.strip():
                return cls()
            proxy = parse_proxy(explicit, "--proxy")
            return cls(proxy, proxy, no_proxy)
        https_value, https_src = _env("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", environ=environ)
        http_value, http_src = _env("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", environ=environ)
        return cls(_parsed_or_error(https_value, https_src), _parsed_or_error(http_value, http_src), no_proxy)

    def for_url(self, url: str) -> Proxy | None:
        """`select` for a URL (its port, or the scheme's default); a bad port is a ValueError."""
        parts = urlsplit(url)
        return self.select(parts.scheme, parts.hostname or "", port_of(parts))

    def select(self, scheme: str, host: str, port: int) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.no_proxy.bypasses(host, port):
            return None
        if isinstance(proxy, ProxySettingError):
            raise proxy
        return proxy


def _parsed_or_error(value: str | None, source: str | None) -> Proxy | ProxySettingError | None:
    if not value:
        return None
    try:
        return parse_proxy(value, source)
    except ProxySettingError as exc:
        exc.hint = "set it to an http:// proxy, or --no-proxy to connect directly"
        return exc


def proxy_config(proxy: str | None) -> ProxyConfig:
    """The proxies of a run; an explicit proxy that cannot be used is refused here (exit 2),
    one from the environment when a request would use it."""
    try:
        return ProxyConfig.from_env(explicit=proxy)
    except ProxySettingError as exc:
        exc.hint = "e.g. --proxy http://proxy.example.org:3128 (or --no-proxy)"
        raise


def ca_bundle(environ=os.environ) -> tuple[str | None, str | None]:
    """(path, the variable it came from) of the CA bundle to trust, or (None, None)."""
    return _env(*CA_ENV, environ=environ)


def ssl_context():
    """The TLS context every transport uses: the CA bundle of the environment, else the
    system's (a site's intercepting proxy signs with a CA of its own, given in one of CA_ENV)."""
    import ssl

    path, var = ca_bundle()
    if path is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ProxySettingError(f"{var}={path!r}: cannot load the CA bundle ({exc})") from None


DEFAULT_PORTS = {"http": 80, "https": 443}


def port_of(parts) -> int:
    """The port a split URL names, or its scheme's default (a bad port is a ValueError)."""
    return parts.port or DEFAULT_PORTS[parts.scheme]


def host_header(scheme: str, host: str, port: int | None) -> str:
    """The Host header for a URL, exactly as botocore's signer computes it (so a signature
    made for it matches what is sent): IPv6 literals bracketed, the scheme's default port
    left out."""
    name = f"[{host}]" if ":" in host else host
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return name
    return f"{name}:{port}"
