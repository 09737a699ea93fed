"""The `schooldns` command: serve, check, explain, token, bundle."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import zoneinfo
from pathlib import Path

import resolver
from resolver.control import checks, config, snapshots, versions
from resolver.errors import ListenError, ResolverError, UsageError

LOG_LEVELS = ["debug", "info", "warning", "error"]


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0 done, 1 a problem (one line says what), 2 a usage error."""
    parser = argparse.ArgumentParser(prog="schooldns", description="DNS filter for school networks.")
    parser.add_argument("--version", action="version", version=f"schooldns {resolver.__version__}")
    # Accepted before or after the command; the default is `info` for serve and `warning` for the
    # tools, whose output is what they print.
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--config", required=True, help="path to config.yaml")
        sub.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
        return sub

    command("serve", "answer DNS queries until SIGTERM")
    command("check", "validate config, policies and lists; exit 1 on errors")
    explain = command("explain", "show what a school gets for a name, and why")
    explain.add_argument("school", help="school id (file stem in policies/)")
    explain.add_argument("name", help="domain name, e.g. www.example.com")
    explain.add_argument(
        "--at",
        help="time to evaluate schedules at: 'YYYY-MM-DD HH:MM' in the "
        "policy timezone, or ISO 8601 with offset (default: now)",
    )

    token = commands.add_parser("token", help="add, list or revoke admin API tokens (admin.tokens_file)")
    token_commands = token.add_subparsers(dest="token_command", required=True)

    def token_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = token_commands.add_parser(name, help=help)
        sub.add_argument("--config", required=True, help="path to config.yaml")
        sub.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
        return sub

    add = token_command("add", "add a token and print it (shown only this once)")
    add.add_argument("--role", required=True, help="province, viewer or school:<school-id>")
    add.add_argument("--name", help="a name for the audit log (default: from the role)")
    token_command("list", "list the tokens: name, role, when added")
    token_command("revoke", "remove a token: it stops working at once").add_argument(
        "name", help="the token's name (see `schooldns token list`)"
    )

    bundle = commands.add_parser("bundle", help="the hub's signed repository of lists and policies (docs/sync.md)")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)

    def bundle_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = bundle_commands.add_parser(name, help=help)
        sub.add_argument("--repo", required=True, help="the repository directory (served as it is to instances)")
        sub.add_argument("--keys", required=True, help="the key directory (<role>.pem, mode 0600)")
        sub.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
        return sub

    bundle_command("init", "create the repository and its keys")
    publish = bundle_command("publish", "publish the lists and policies a config names, if changed")
    publish.add_argument("--config", required=True, help="path to config.yaml (its blocklists_dir and policies_dir)")
    publish.add_argument(
        "--allow-shrink",
        nargs="+",
        action="extend",
        default=[],
        metavar="CATEGORY",
        help="let instances take these categories though they lose more than sync.max_shrink_percent",
    )
    rotate = bundle_command("rotate", "a new root version (root key needed): new keys for roles, a later expiry")
    rotate.add_argument(
        "--role", nargs="+", action="extend", default=[], help="root, targets, snapshot or timestamp: give it a new key"
    )
    rotate.add_argument("--root-key", help="the root key's file, if not in --keys (kept offline)")

    args = parser.parse_args(argv)
    level = args.log_level or ("info" if args.command == "serve" else "warning")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            cfg = config.load_config(args.config)
            forker = None
            if cfg.workers > 1:
                # Forked here, single-threaded and before the admin API's libraries are imported:
                # the workers it forks share the data plane's pages with this process, and the
                # supervisor writes to no shared page of the libraries only it uses.
                from resolver.processes import spawner

                forker = spawner.Spawner.fork()
            from resolver.processes import app  # only `serve` needs the servers

            app.serve(cfg, forker)
            return 0
        if args.command == "check":
            return _check(args.config)
        if args.command == "token":
            return _token(args)
        if args.command == "bundle":
            return _bundle(args)
        return _explain(args.config, args.school, args.name, args.at)
    except UsageError as exc:
        print(f"schooldns {args.command}: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:  # names an address, not a file: said by the program's name
        print(f"schooldns: {exc}", file=sys.stderr)
        return 1
    except ResolverError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:  # a listen address in use or not permitted, an unreadable state_dir: not a bug
        print(f"schooldns {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _check(config_path: str) -> int:
    cfg = versions.served_config(config.load_config(config_path))  # with `sync:`, the version being served
    report = checks.check(cfg)
    for line in report:
        print(line)
    print(f"{config_path}: OK")
    return 0


def _token(args: argparse.Namespace) -> int:
    from resolver.operations import tokens  # the admin API's room; only this command needs it here

    path = config.load_config(args.config).admin.tokens_file
    if args.token_command == "add":
        try:
            role = tokens.Role.parse(args.role)
        except ValueError as exc:
            raise UsageError(f"--role: {exc}") from None
        token, secret = tokens.add(path, role, args.name)
        print(secret)
        print(f"token {token.name!r} ({token.role}) added to {path}; it is shown only now", file=sys.stderr)
    elif args.token_command == "list":
        for token in tokens.load(path).tokens:
            created = datetime.datetime.fromtimestamp(token.created, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            print(f"{token.name}\t{token.role}\t{created}")
    else:
        token = tokens.revoke(path, args.name)
        print(f"token {token.name!r} ({token.role}) revoked", file=sys.stderr)
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from resolver.control import bundle  # tuf: only this command and a hub need it

    repo, keys = Path(args.repo), Path(args.keys)
    if args.bundle_command == "init":
        root = bundle.init(repo, keys)
        print(f"created {repo}: give every instance a copy of {root} as sync.trusted_root")
        print(f"keys in {keys}: move root.pem offline now (docs/sync.md); the hub publishes with the other three")
    elif args.bundle_command == "publish":
        done = bundle.publish(repo, keys, config.load_config(args.config), args.allow_shrink)
        state = "published" if done.changed else "unchanged:"
        signed = f" (signed {', '.join(done.signed)})" if done.signed and not done.changed else ""
        print(f"{state} version {done.version}{signed}")
    else:
        version = bundle.rotate(repo, keys, args.role, Path(args.root_key) if args.root_key else None)
        print(f"wrote metadata/{version}.root.json; instances take it at their next sync")
    return 0


def _explain(config_path: str, school_id: str, name: str, at: str | None) -> int:
    cfg = versions.served_config(config.load_config(config_path))
    checks.check_name(name)  # before the lists are loaded: a URL is a typing slip, said at once
    snapshot = snapshots.build_snapshot(cfg, 1)
    when = _parse_time(at, snapshot.province.timezone) if at else datetime.datetime.now(datetime.UTC)
    for line in checks.explain(snapshot, school_id, name, when.timestamp(), cfg.blocklists_dir):
        print(line)
    return 0


def _parse_time(text: str, timezone: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at: cannot read {text!r}; use 'YYYY-MM-DD HH:MM'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return moment


if __name__ == "__main__":
    sys.exit(main())
