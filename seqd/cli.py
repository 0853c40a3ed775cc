"""The `seqd` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec

from seqd import __version__, collector, export_cli, importer, logs, rediscli, supervisor
from seqd import config as configmod
from seqd.channels import registry as channel_registry
from seqd.config import Config, ConfigError
from seqd.embedded import EmbeddedError
from seqd.lifecycle import ingest_cli
from seqd.service import ListenError, WorkerSpec, open_store, serve
from seqd.store.tenants import valid_tenant


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)


async def _keys(args: argparse.Namespace, config: Config) -> int:
    async with open_store(config) as store:
        if args.keys_command == "create":
            key, secret = await store.tenants.create_key(args.tenant, args.label, test=args.test)
            print(f"created key {key.id} for tenant {key.tenant}; it is shown only now:")
            print(secret)
        elif args.keys_command == "list" and args.tenant is None:
            keys = await store.tenants.all_keys()
            for tenant in sorted(await store.tenants.names() | {k.tenant for k in keys}):
                count = sum(1 for k in keys if k.tenant == tenant)
                print(f"{tenant}\t{count} key{'' if count == 1 else 's'}")
        elif args.keys_command == "list":
            for key in await store.tenants.list_keys(args.tenant):
                print(f"{key.id}\t{key.prefix}…\t{key.created_at}\t{key.label}")
        else:
            if not await store.tenants.revoke(args.key_id):
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    return 0


async def _status(config: Config, watch: float | None) -> int:
    from rich.console import Console

    from seqd import status

    async with open_store(config) as store:
        await status.show(store, Console(), watch)
    return 0


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("SECONDS is a number from 0.1 to 3600")
    return seconds


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) > 512:
        raise argparse.ArgumentTypeError("N is a number from 0 to 512")
    return int(value)


def _tenant(value: str) -> str:
    if not valid_tenant(value):
        raise argparse.ArgumentTypeError(
            "a tenant name is 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter "
            "or digit"
        )
    return value


def _serve(args: argparse.Namespace, config: Config, path: str | None) -> int:
    if args.worker_spec is not None:
        spec = msgspec.json.decode(args.worker_spec, type=WorkerSpec)
        return _run(serve(supervisor.worker_config(config, spec), config_path=path, worker=spec))
    size = supervisor.count(config, args.workers)
    if size == 1:
        return _run(serve(config, config_path=path))
    return _run(supervisor.supervise(config, size, config_path=path))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqd", description="Self-hosted sequence engine")
    p.add_argument("--config", "-c", help="TOML config file (default: $SEQD_CONFIG)")
    p.add_argument("--version", action="version", version=f"seqd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API and the dispatcher")
    s.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    s.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes behind one supervisor (default: http.workers, 0 = one per "
        "core; 1: a single process, no supervisor)",
    )
    s.add_argument(supervisor.SPEC_OPTION, dest="worker_spec", help=argparse.SUPPRESS)

    k = sub.add_parser("keys", help="manage API keys")
    k.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    ks = k.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser("create", help="create a key; printed on the last line")
    kc.add_argument("--tenant", required=True, type=_tenant)
    kc.add_argument("--label", default="")
    kc.add_argument("--test", action="store_true", help="a test key (prefix sk_test_)")
    kl = ks.add_parser("list", help="list a tenant's keys; without --tenant, the tenants")
    kl.add_argument("--tenant", type=_tenant)
    kr = ks.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")

    cc = sub.add_parser("check-config", help="validate a config and print the effective settings")
    cc.add_argument("file", nargs="?")

    st = sub.add_parser("status", help="one screen: backlogs, lateness, send rates, sequences")
    st.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    st.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_seconds,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )

    ingest_cli.add_parser(sub, _tenant)

    rc = sub.add_parser(
        "redis-cli",
        help="valkey-cli on seqd's store (the embedded one's socket, or redis.url)",
        description="Arguments after the command go to valkey-cli; none: interactive.",
    )
    rc.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    rc.add_argument("args", nargs=argparse.REMAINDER, help="a command and its arguments")

    export_cli.add_parser(sub, _tenant)

    im = sub.add_parser("import", help="upsert contacts from a CSV file, optionally enroll them")
    im.add_argument("--config", "-c", dest="config_sub", help=argparse.SUPPRESS)
    im.add_argument("file", type=Path, help="CSV with a header row; rejects: FILE.rejected.csv")
    im.add_argument("--tenant", required=True, type=_tenant)
    im.add_argument("--sequence", help="enroll every imported contact in this sequence")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = getattr(args, "config_sub", None) or args.config
    if args.command == "check-config":
        path = args.file or path
    try:
        config = configmod.load(path)
        if args.command in ("serve", "check-config"):
            # What each chosen provider needs (credentials, from number), before anything starts.
            channel_registry.check(config)
    except ConfigError as exc:
        print(f"seqd: bad config: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log)
    collector.tune()
    try:
        if args.command == "serve":
            return _serve(args, config, path)
        if args.command == "keys":
            return _run(_keys(args, config))
        if args.command == "status":
            try:
                return _run(_status(config, args.watch))
            except KeyboardInterrupt:  # Ctrl-C ends --watch
                return 0
        if args.command == "export":
            return export_cli.run(args, config, _run)
        if args.command == "import":
            return importer.main(config, args.file, args.tenant, args.sequence, _run)
        if args.command == "redis-cli":
            return _run(rediscli.run(config, args.args))
        if args.command == "ingest-email":
            return ingest_cli.run(args, config, _run)
        if args.command == "check-config":
            print(msgspec.json.format(msgspec.json.encode(configmod.masked(config))).decode())
            warning = config.http.public_url_warning()
            if warning:
                print(f"seqd: warning: {warning}", file=sys.stderr)
            return 0
    except (EmbeddedError, ListenError) as exc:
        print(f"seqd: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
