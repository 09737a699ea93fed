"""The `schooldns` command: serve, check, explain, token, status, reload, bundle, report."""

from __future__ import annotations

import argparse
import datetime
import getpass
import logging
import os
import pathlib
import sys
import time
from pathlib import Path

import resolver
from resolver.control import checks, config, snapshots, versions
from resolver.errors import ListenError, ResolverError, UsageError

LOG_LEVELS = ["debug", "info", "warning", "error"]


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0 done, 1 a problem (one line says what), 2 a usage error."""
    # Raw: `--version` (which lists the compiled modules) stays on one line, however long.
    parser = argparse.ArgumentParser(
        prog="schooldns",
        description="DNS filter for school networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=resolver.build_description())
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
    check = command("check", "validate config, policies and lists; exit 1 on errors")
    check.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="also show the school a client address belongs to (may be given several times)",
    )
    explain = command("explain", "show what a school (or a client address) gets for a name, and why")
    explain.add_argument("school", nargs="?", help="school id (file stem in policies/); leave it out with --client")
    explain.add_argument("name", help="domain name, e.g. www.example.com")
    explain.add_argument(
        "--client", metavar="ADDRESS", help="a device's address instead of SCHOOL: its school, then why"
    )
    explain.add_argument(
        "--at",
        help="time to evaluate schedules at: 'YYYY-MM-DD HH:MM' in the "
        "policy timezone, or ISO 8601 with offset (default: now)",
    )

    for name, text in (
        ("status", "ask the running server how it is (GET /v1/status on admin.listen)"),
        ("reload", "have the running server load its files again (POST /v1/reload)"),
    ):
        remote = command(name, text)
        remote.add_argument("--token-file", help="file holding an admin API token (default: $SCHOOLDNS_TOKEN)")
        if name == "status":
            remote.add_argument("--json", action="store_true", help="print the server's JSON as it is")

    annual = command("report", "the year's report from the daily rollups: one row per school, and the coverage")
    annual.add_argument("--year", help="the year (default: this year in the policies' time zone)")
    annual.add_argument("--format", default="md", help="md (Markdown, the default), csv or json")
    annual.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="FILE",
        help="add the JSON reports (--format json) of other instances to this one's",
    )

    token = commands.add_parser("token", help="add, list or revoke admin API and DoH tokens (admin.tokens_file)")
    token_commands = token.add_subparsers(dest="token_command", required=True)

    def token_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = token_commands.add_parser(name, help=help)
        sub.add_argument("--config", required=True, help="path to config.yaml")
        sub.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
        return sub

    add = token_command("add", "add a token and print it (shown only this once)")
    add.add_argument(
        "--role", required=True, help="province, viewer, school:<school-id> (admin API) or doh:<school-id> (DoH)"
    )
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
            from resolver.processes import heap

            heap.tune()  # before the config, the snapshot and the imports allocate
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
            return _check(args.config, args.client)
        if args.command == "token":
            return _token(args)
        if args.command in ("status", "reload"):
            return _remote(args)
        if args.command == "bundle":
            return _bundle(args)
        if args.command == "report":
            return _report(args.config, args.year, args.format, args.merge)
        return _explain(args.config, args.school, args.name, args.at, args.client)
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


def _check(config_path: str, clients: list[str]) -> int:
    cfg = versions.served_config(config.load_config(config_path))  # with `sync:`, the version being served
    report = checks.check(cfg, clients)
    for line in report:
        print(line)
    print(f"{config_path}: OK")
    return 0


def _remote(args: argparse.Namespace) -> int:
    import json

    from resolver.operations import apiclient

    cfg = config.load_config(args.config)
    token = apiclient.token_from(args.token_file)
    if args.command == "reload":
        answer = apiclient.call(cfg, "POST", "/v1/reload", token)
        print(f"reloaded: generation {answer.get('generation')}")
        return 0
    answer = apiclient.call(cfg, "GET", "/v1/status", token)
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    for line in _status_lines(answer):
        print(line)
    return 0


def _status_lines(status: dict[str, object]) -> list[str]:
    """/v1/status as a few lines for a person (`--json` prints all of it)."""
    entries = status.get("list_entries")
    total = sum(entries.values()) if isinstance(entries, dict) else 0
    age = status.get("lists_age_seconds")
    out = [
        f"schooldns {status.get('version')}: generation {status.get('generation')}, {status.get('workers')} worker(s)",
        f"lists: {total} entries" + (f", loaded {age:.0f} s ago" if isinstance(age, (int, float)) else ""),
    ]
    if status.get("degraded"):
        out.append("DEGRADED: every upstream is failing (allowed names get SERVFAIL)")
    if status.get("serving_last_good"):
        out.append("SERVING THE LAST GOOD policies and lists: the files do not build (see the server's log)")
    upstreams = status.get("upstreams")
    for row in upstreams if isinstance(upstreams, list) else []:
        if isinstance(row, dict):
            health = "FAILING" if row.get("failing") else "up" if row.get("up") else "no answer yet"
            out.append(f"upstream {row.get('address')}: {health}")
    sync = status.get("sync")
    if isinstance(sync, dict):
        state = "failing: " + str(sync.get("last_error")) if sync.get("consecutive_failures") else "ok"
        out.append(f"sync from {sync.get('repository')}: version {sync.get('version')}, {state}")
    return out


def _report(config_path: str, year_text: str | None, form_text: str, merge: list[str]) -> int:
    from resolver.filtering import lists, policyfile
    from resolver.operations import report

    cfg = config.load_config(config_path)
    try:
        year = report.check_year(year_text, "--year") if year_text is not None else None
        form = report.Format.named(form_text, "--format")
        others = []
        for path in merge:  # read before the rollups: a wrong file is said at once
            try:
                text = pathlib.Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise report.ReportError(f"--merge {path}: {exc}") from None
            others.append((path, report.load_json(text, path)))
    except report.ReportError as exc:
        raise UsageError(str(exc)) from None
    policies = policyfile.load_policies(cfg.policies_dir, lists.load_sources(cfg.blocklists_dir).categories)
    now = datetime.datetime.now(datetime.UTC)
    if year is None:
        year = report.this_year(policies.province.tz, now)
    made = report.of_year(cfg.state_dir, policies, year, now)
    if others:
        made = report.merge([(cfg.state_dir.as_posix(), made), *others])
    sys.stdout.write(report.render(made, form))
    return 0


def _token(args: argparse.Namespace) -> int:
    from resolver.operations import audit, tokens  # the admin API's rooms; only this command needs them here

    cfg = config.load_config(args.config)
    path = cfg.admin.tokens_file
    if args.token_command == "list":
        for token in tokens.load(path).tokens:
            created = datetime.datetime.fromtimestamp(token.created, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            print(f"{token.name}\t{token.role}\t{created}")
        return 0
    if args.token_command == "add":
        try:
            role = tokens.Role.parse(args.role)
        except ValueError as exc:
            raise UsageError(f"--role: {exc}") from None
        token, secret = tokens.add(path, role, args.name)
        action = audit.Action.TOKEN_ADD
        print(secret)
        print(f"token {token.name!r} ({token.role}) added to {path}; it is shown only now", file=sys.stderr)
    else:
        token = tokens.revoke(path, args.name)
        action = audit.Action.TOKEN_REVOKE
        print(f"token {token.name!r} ({token.role}) revoked", file=sys.stderr)
    try:
        who = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        who = f"cli:uid {os.getuid()}"
    entry = audit.Entry(action, audit.Result.OK, who, "local", time.time(), token=f"{token.name} ({token.role})")
    try:
        audit.AuditLog(cfg.state_dir).append(entry)
    except OSError as exc:  # the change is made: say that it is not in the audit log
        print(f"schooldns token: not written to the audit log in {cfg.state_dir}: {exc}", file=sys.stderr)
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


def _explain(config_path: str, school_id: str | None, name: str, at: str | None, client: str | None) -> int:
    if school_id is None and client is None:
        raise UsageError("give a school and a name (SCHOOL NAME), or a client address: --client ADDRESS NAME")
    if school_id is not None and client is not None:
        raise UsageError(f"give a school ({school_id!r}) or --client ADDRESS, not both")
    cfg = versions.served_config(config.load_config(config_path))
    # Before the lists are loaded: a URL or a mistyped address is a typing slip, said at once.
    checks.check_name(name)
    address = checks.parse_client(client) if client is not None else None
    snapshot = snapshots.build_snapshot(cfg, 1)
    when = checks.parse_time(at, snapshot.province.timezone) if at else datetime.datetime.now(datetime.UTC)
    if address is not None:
        school, lines = checks.client_school(address, snapshot.directory, snapshot.policies, snapshot.default_school)
        for line in lines:
            print(line)
        if school is None:
            return 0
        school_id = school.id
    assert school_id is not None  # one of the two was given (checked above)
    for line in checks.explain(snapshot, school_id, name, when.timestamp(), cfg.blocklists_dir):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
