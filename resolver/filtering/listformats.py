"""List formats (domains, hosts, adblock, RPZ) parsed into normalized (name, match, kind) entries or runs of names."""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from typing import TextIO

import idna

from resolver.errors import ResolverError

log = logging.getLogger(__name__)

EXACT = "exact"
SUBTREE = "subtree"
BELOW = "below"  # the names under a name, not the name itself: RPZ's `*.d`
BLOCK = "block"
ALLOW = "allow"
FORMATS = ("domains", "hosts", "adblock", "rpz")
FORMATS_WITH_MATCH = frozenset({"domains", "hosts"})

Entry = tuple[str, str, str]
"""(name, match, kind): a lower-case A-label name without trailing dot, "exact"|"subtree"|"below", "block"|"allow"."""

COMMENT = "comment"
IP_ADDRESS = "ip address"
LOCAL_NAME = "local name"
_NOT_INVALID = frozenset({IP_ADDRESS, LOCAL_NAME})  # name rejections that are skips, not errors

MAX_NAME = 253
MAX_LABEL = 63


class InvalidName(ResolverError, ValueError):
    """Text that is not a usable domain name; `.reason` is a short fixed phrase (a report key)."""

    def __init__(self, reason: str, text: str = ""):
        self.reason = reason
        self.text = text
        super().__init__(f"{reason}: {text!r}" if text else reason)


# Fast path, measured: lower-case LDH(+underscore) labels without leading/trailing hyphen, at least
# two labels, an alphabetic TLD; possessive quantifiers so the engine never backtracks. A match
# still needs "xn--" absent and the 63/253 length limits (checked only for names over 63).
_fast = re.compile(r"(?:[a-z0-9_]++(?:-++[a-z0-9_]++)*+\.)++[a-z]{2,63}").fullmatch
_ascii_label = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?").fullmatch
_ldh_chars = re.compile(r"[a-z0-9_-]*").fullmatch


def _long_ok(name: str) -> bool:
    return len(name) <= MAX_NAME and max(map(len, name.split("."))) <= MAX_LABEL


def normalize_name(text: str) -> str:
    """Text -> lower-case A-label name without trailing dot, or raise InvalidName(reason).

    One trailing dot is stripped. Unicode names are mapped with UTS-46 (non-transitional) and
    encoded with IDNA 2008 to xn-- A-labels; xn-- labels must decode and round-trip. Labels are
    1..63 characters of a-z 0-9 '-' '_' (no leading or trailing '-'; '--' in positions 3-4 is
    allowed, as DNS does, e.g. r3---sn-x.googlevideo.com); names are at most 253 characters.
    Refused: IP addresses ("ip address"), single labels such as a bare TLD ("single label"),
    all-numeric TLDs ("numeric tld").
    """
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if _fast(name) and "xn--" not in name and (len(name) <= MAX_LABEL or _long_ok(name)):
        return name
    if not name:
        raise InvalidName("empty name", text)
    if not name.isascii():
        try:
            name = idna.uts46_remap(name, std3_rules=False, transitional=False).removesuffix(".")
        except idna.IDNAError:
            raise InvalidName("invalid idn", text) from None
    if (":" in name or name[-1].isdigit()) and _is_ip(name):
        raise InvalidName(IP_ADDRESS, text)
    labels = [_normalize_label(label, text) for label in name.split(".")]
    if len(labels) < 2:
        raise InvalidName("single label", text)
    if labels[-1].isdigit():
        raise InvalidName("numeric tld", text)
    name = ".".join(labels)
    if len(name) > MAX_NAME:
        raise InvalidName("name too long", text)
    return name


def _normalize_label(label: str, text: str) -> str:
    if not label:
        raise InvalidName("empty label", text)
    if not label.isascii() or label.startswith("xn--"):
        alabel = _idn_label(label)
        if alabel is None:
            raise InvalidName("invalid idn", text)
        label = alabel
    elif not _ascii_label(label):
        raise InvalidName("label starts or ends with hyphen" if _ldh_chars(label) else "invalid character", text)
    if len(label) > MAX_LABEL:
        raise InvalidName("label too long", text)
    return label


@functools.lru_cache(maxsize=4096)
def _idn_label(label: str) -> str | None:
    """A Unicode label -> its A-label; an xn-- label -> itself if it is a valid IDNA 2008 label; else None."""
    try:
        if not label.isascii():
            return idna.alabel(label).decode("ascii")
        ulabel = label[4:].encode("ascii").decode("punycode")
        idna.check_label(ulabel)
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return None if ulabel.isascii() else label


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class Tally:
    """What a parser did not turn into entries: counts by reason, and the first line of each reason.

    `skipped` counts lines that are not domain rules by design (comments, cosmetic or path rules,
    IP addresses, unsupported actions); `invalid` counts lines that should have been a name but
    are malformed. Blank lines are not counted.
    """

    __slots__ = ("examples", "invalid", "reasons", "skipped")

    def __init__(self) -> None:
        self.skipped = 0
        self.invalid = 0
        self.reasons: dict[str, int] = {}
        self.examples: dict[str, tuple[int, str]] = {}  # reason -> (line number, line text)

    def skip(self, number: int, reason: str, text: str) -> None:
        self.skipped += 1
        self._count(number, reason, text)

    def reject(self, number: int, reason: str, text: str) -> None:
        """A line whose name failed: invalid, except reasons that only mean "not a domain"."""
        if reason in _NOT_INVALID:
            self.skipped += 1
        else:
            self.invalid += 1
        self._count(number, reason, text)

    def _count(self, number: int, reason: str, text: str) -> None:
        count = self.reasons.get(reason)
        self.reasons[reason] = 1 if count is None else count + 1
        if count is None and reason != COMMENT:
            self.examples[reason] = (number, text[:200])


def _name_or_reject(text: str, number: int, line: str, tally: Tally) -> str | None:
    try:
        return normalize_name(text)
    except InvalidName as exc:
        tally.reject(number, exc.reason, line)
        return None


# --- domains -------------------------------------------------------------------------------


def parse_domains(lines: Iterable[str], tally: Tally | None = None, *, match: str = SUBTREE) -> Iterator[Entry]:
    """One name per line, '#' comments (whole-line or trailing); `*.d` is d's subtree even in an exact source."""
    tally = tally if tally is not None else Tally()
    fast = _fast
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if fast(text) and "xn--" not in text and (len(text) <= MAX_LABEL or _long_ok(text)):
            yield text, match, BLOCK
        elif (entry := _domains_rule(text, number, tally, match)) is not None:
            yield entry


def parse_domains_text(
    text: str, tally: Tally | None = None, *, match: str = SUBTREE
) -> dict[tuple[str, str], list[str]]:
    """`parse_domains` over a whole file's text at once: {(match, kind): names}, the same tally.

    `text` is a file read in text mode (universal newlines, so lines end in "\n" only). Names go
    straight into their run, with no entry tuple per line to group afterwards.
    """
    tally = tally if tally is not None else Tally()
    fast = _fast
    names: list[str] = []
    runs = {(match, BLOCK): names}
    for number, line in enumerate(text.split("\n"), 1):
        name = line.strip()
        if fast(name) and "xn--" not in name and (len(name) <= MAX_LABEL or _long_ok(name)):
            names.append(name)
        elif (entry := _domains_rule(name, number, tally, match)) is not None:
            runs.setdefault((entry[1], entry[2]), []).append(entry[0])
    return runs


def _domains_rule(text: str, number: int, tally: Tally, match: str) -> Entry | None:
    """A stripped domains line the fast path did not take: its entry, or None (counted in `tally`)."""
    if not text:
        return None
    if text[0] == "#":
        tally.skip(number, COMMENT, text)
        return None
    name = text.partition("#")[0].rstrip()
    entry_match = match
    if name.startswith("*."):
        name, entry_match = name[2:], SUBTREE
    if " " in name or "\t" in name:
        tally.reject(number, "more than one field", text)
    elif "*" in name:
        tally.reject(number, "wildcard", text)
    elif (listed := _name_or_reject(name, number, text, tally)) is not None:
        return listed, entry_match, BLOCK
    return None


# --- hosts ---------------------------------------------------------------------------------

_SINKS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0", "0:0:0:0:0:0:0:1"})
_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "localdomain",
        "broadcasthost",
        "0.0.0.0",
    }
)


def parse_hosts(lines: Iterable[str], tally: Tally | None = None, *, match: str = SUBTREE) -> Iterator[Entry]:
    """`address name [name...]` lines, any IP address (it is ignored); '#' comments; a lone name is a name.

    localhost-style names (localhost, localhost.localdomain, local, broadcasthost, 0.0.0.0, ip6-*)
    are skipped as "local name".
    """
    tally = tally if tally is not None else Tally()
    fast = _fast
    sinks = _SINKS
    local_names = _LOCAL_NAMES
    for number, line in enumerate(lines, 1):
        text = line.strip()
        space = text.find(" ")
        if space > 0 and text[:space] in sinks:
            name = text[space + 1 :]
            if (
                fast(name)
                and "xn--" not in name
                and (len(name) <= MAX_LABEL or _long_ok(name))
                and name not in local_names
                and not name.startswith("ip6-")
            ):
                yield name, match, BLOCK
                continue
        if not text:
            continue
        if text[0] == "#":
            tally.skip(number, COMMENT, text)
            continue
        fields = text.partition("#")[0].split()
        if fields[0] in sinks or (len(fields) > 1 and _is_ip(fields[0])):
            names = fields[1:]
            if not names:
                tally.reject(number, "address without name", text)
        elif len(fields) == 1:
            names = fields
        else:
            tally.reject(number, "first field is not an address", text)
            continue
        for name in names:
            lowered = name.lower()
            if lowered in _LOCAL_NAMES or lowered.startswith("ip6-"):
                tally.skip(number, LOCAL_NAME, text)
            elif "*" in name:
                tally.reject(number, "wildcard", text)
            elif (listed := _name_or_reject(name, number, text, tally)) is not None:
                yield listed, match, BLOCK


# --- adblock -------------------------------------------------------------------------------

# Options that keep a rule about the whole domain: accepted, and otherwise ignored ($important is
# accepted but gives no precedence: in the index an allow entry always wins over a block entry).
ADBLOCK_OPTIONS = frozenset({"important", "doc", "document", "all", "match-case", "reason"})
# Real options that narrow a rule below the domain (request type, party, initiator, client): the
# whole rule is skipped, counted as "option $name" (also for "~name"); others as "unknown option".
_NARROWING_OPTIONS = frozenset(
    {
        "third-party",
        "3p",
        "first-party",
        "1p",
        "strict1p",
        "strict3p",
        "script",
        "image",
        "stylesheet",
        "css",
        "xmlhttprequest",
        "xhr",
        "subdocument",
        "frame",
        "object",
        "media",
        "font",
        "ping",
        "websocket",
        "other",
        "popup",
        "popunder",
        "domain",
        "from",
        "to",
        "denyallow",
        "badfilter",
        "redirect",
        "redirect-rule",
        "removeparam",
        "csp",
        "permissions",
        "header",
        "ipaddress",
        "method",
        "client",
        "ctag",
        "dnstype",
        "dnsrewrite",
        "elemhide",
        "ehide",
        "generichide",
        "ghide",
        "specifichide",
        "shide",
        "genericblock",
        "inline-script",
        "inline-font",
        "empty",
        "mp4",
        "cname",
        "rewrite",
        "replace",
        "urltransform",
        "jsonprune",
        "network",
        "app",
        "cookie",
        "stealth",
        "content",
        "extension",
        "jsinject",
        "urlblock",
    }
)
_cosmetic = re.compile(r"#@?[$?%]{0,2}#|#@?\+js|\$@?\$").search


def parse_adblock(lines: Iterable[str], tally: Tally | None = None) -> Iterator[Entry]:
    """Domain-level adblock rules: `||d^` subtree, `|d^` and bare `d` exact, `*.d^` subtree, `@@` allow.

    Cosmetic, path/URL, regex and wildcard rules, IP addresses, and rules with any option outside
    ADBLOCK_OPTIONS are skipped whole and counted by reason; a rule is never half-applied.
    """
    tally = tally if tally is not None else Tally()
    fast = _fast
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text[:2] == "||" and text[-1:] == "^":
            name = text[2:-1]
            if fast(name) and "xn--" not in name and (len(name) <= MAX_LABEL or _long_ok(name)):
                yield name, SUBTREE, BLOCK
                continue
        if not text:
            continue
        first = text[0]
        if first == "!" or first == "[":
            tally.skip(number, COMMENT, text)
        elif _cosmetic(text):
            tally.skip(number, "cosmetic", text)
        elif first == "#":
            tally.skip(number, COMMENT, text)
        elif (entry := _adblock_rule(text, number, tally)) is not None:
            yield entry


def _adblock_rule(text: str, number: int, tally: Tally) -> Entry | None:
    kind = BLOCK
    rule = text
    if rule.startswith("@@"):
        kind, rule = ALLOW, rule[2:]
    if rule.startswith("/"):
        body = rule.rpartition("$")[0] if "/$" in rule else rule
        tally.skip(number, "regex" if len(body) > 1 and body.endswith("/") else "path rule", text)
        return None
    pattern, has_options, options = rule.partition("$")
    host, match, anchored, separated = pattern, EXACT, False, True
    if host.startswith("||"):
        host, match, anchored = host[2:], SUBTREE, True
    elif host.startswith("|"):
        host, anchored = host[1:], True
    if host.startswith("*."):
        host, match = host[2:], SUBTREE
    if host.endswith("^|"):
        host = host[:-2]
    elif host.endswith(("^", "|")):
        host = host[:-1]
    else:
        separated = False
    if (reason := _host_pattern_problem(host)) is not None:
        tally.skip(number, reason, text)
        return None
    # Options first: a rule narrowed by an option (e.g. `||com^$doc,ipaddress=...`) is skipped
    # whole even when its pattern is not a usable name on its own, so it is never "invalid".
    if has_options:
        for option in options.split(","):
            option_name = option.partition("=")[0].strip().lower()
            if option_name not in ADBLOCK_OPTIONS:
                known = option_name.removeprefix("~") in _NARROWING_OPTIONS
                tally.skip(number, f"option ${option_name}" if known else "unknown option", text)
                return None
    try:
        name = normalize_name(host)
    except InvalidName as exc:
        # `||name^` that is not a name is a broken rule; `||prefix` and bare text are URL patterns.
        if exc.reason == IP_ADDRESS or (anchored and separated):
            tally.reject(number, exc.reason, text)
        else:
            tally.skip(number, "url pattern", text)
        return None
    return name, match, kind


def _host_pattern_problem(host: str) -> str | None:
    """Why a pattern (anchors and separator stripped) is not a host name at all, or None."""
    if not host:
        return "url pattern"
    if "/" in host:
        return "path rule"
    if "*" in host:
        return "wildcard"
    if "^" in host or "?" in host or "&" in host or "=" in host or "|" in host:
        return "path rule"
    if ":" in host and not _is_ip(host):
        return "url rule"
    return None


# --- rpz -----------------------------------------------------------------------------------

_CLASSES = frozenset({"IN", "CH", "HS", "CS"})
# Digit runs, each but the last followed by one unit letter: one way to match, so no backtracking
# (written as (?:\d+[smhdw]?)+ a long run of digits not followed by a unit took minutes).
_is_ttl = re.compile(r"\d+(?:[smhdw]\d+)*[smhdw]?", re.IGNORECASE).fullmatch
_RPZ_TRIGGERS = frozenset({"rpz-ip", "rpz-nsip", "rpz-nsdname", "rpz-client-ip"})
_RPZ_ACTIONS = {".": BLOCK, "rpz-passthru.": ALLOW}
_RPZ_SKIPPED_ACTIONS = {"*.": "action nodata", "rpz-drop.": "action rpz-drop", "rpz-tcp-only.": "action rpz-tcp-only"}


def parse_rpz(lines: Iterable[str], tally: Tally | None = None, *, origin: str = "") -> Iterator[Entry]:
    """RPZ zone text: `d CNAME .` block exact, `*.d CNAME .` block below d, `CNAME rpz-passthru.` allow.

    As in RPZ itself, `*.d` covers the names under d and not d (list d too for both).

    Trigger names are owner names relative to the zone apex: the `origin` argument, else the first
    $ORIGIN, else the absolute owner of the SOA record, else the root (relative names are then the
    trigger names themselves). `$TTL`, TTL and class columns, ';' comments and parenthesised
    multi-line records are understood. Other triggers (rpz-ip, rpz-nsdname, ...) and actions
    (NODATA `*.`, rpz-drop., local data such as A records) are skipped and counted.
    """
    tally = tally if tally is not None else Tally()
    zone = _RpzZone(origin.lower().removesuffix("."))
    fast = _fast
    pending: list[str] = []
    pending_start = 0
    for number, line in enumerate(lines, 1):
        if line.endswith((" CNAME .\n", " CNAME .")) and line[0] not in " \t;$*@" and zone.plain:
            owner = line[: line.rindex(" CNAME .")].rstrip()
            if fast(owner) and "xn--" not in owner and (len(owner) <= MAX_LABEL or _long_ok(owner)):
                zone.owner = owner
                yield owner, EXACT, BLOCK
                continue
        text = line.partition(";")[0].rstrip()
        if pending:
            pending.append(text)
            if ")" in text:
                record = " ".join(pending).replace("(", " ").replace(")", " ")
                pending = []
                yield from zone.record(record, pending_start, tally)
        elif not text.strip():
            if line.lstrip().startswith(";"):
                tally.skip(number, COMMENT, line.strip())
        elif "(" in text and ")" not in text:
            pending, pending_start = [text], number
        else:
            yield from zone.record(text.replace("(", " ").replace(")", " "), number, tally)
    if pending:
        tally.reject(pending_start, "unclosed parenthesis", pending[0].strip())


class _RpzZone:
    """The state of one zone file while it is read: origin, apex and the last owner's trigger name."""

    __slots__ = ("apex", "origin", "owner", "plain")

    def __init__(self, origin: str):
        self.origin = origin  # the current $ORIGIN, absolute without the dot ("" = root)
        self.apex = origin or None  # the zone name that trigger names are relative to
        self.owner: str | None = None  # trigger name of the last owner ("." once: outside the zone)
        self.plain = True  # origin == apex: a relative owner is its own trigger name

    def record(self, text: str, number: int, tally: Tally) -> Iterator[Entry]:
        fields = text.split()
        line = text.strip()
        if not fields:  # a stray ")" or an empty "( )"
            tally.reject(number, "parentheses with no record", line)
            return
        if fields[0].startswith("$"):
            self._directive(fields, number, line, tally)
            return
        owner_text = None if text[0] in " \t" else fields.pop(0).lower()
        while fields and (fields[0].upper() in _CLASSES or _is_ttl(fields[0])):
            fields.pop(0)
        rtype = fields[0].upper() if fields else ""
        if owner_text is not None:
            absolute = self._absolute(owner_text)
            if rtype == "SOA" and self.apex is None:
                self.apex = absolute
                self.origin = self.origin or absolute
                self.plain = self.origin == self.apex
            self.owner = self._trigger(absolute)
        trigger = self.owner
        if not rtype:
            tally.reject(number, "no record type", line)
        elif rtype in ("SOA", "NS"):
            tally.skip(number, "zone record", line)
        elif trigger is None:
            tally.reject(number, "no owner name", line)
        elif trigger == ".":
            tally.reject(number, "outside zone origin", line)
        elif rtype != "CNAME" or len(fields) != 2:
            tally.skip(number, "local data", line)
        elif (kind := _RPZ_ACTIONS.get(fields[1].lower())) is None:
            tally.skip(number, _RPZ_SKIPPED_ACTIONS.get(fields[1].lower(), "local data"), line)
        else:
            match = EXACT
            if trigger.startswith("*."):
                trigger, match = trigger[2:], BELOW
            if trigger.rpartition(".")[2] in _RPZ_TRIGGERS:
                tally.skip(number, "unsupported trigger", line)
            elif "*" in trigger:
                tally.reject(number, "wildcard", line)
            elif (name := _name_or_reject(trigger, number, line, tally)) is not None:
                yield name, match, kind

    def _directive(self, fields: list[str], number: int, line: str, tally: Tally) -> None:
        directive = fields[0].upper()
        if directive == "$ORIGIN" and len(fields) == 2:
            self.origin = self._absolute(fields[1].lower())
            self.apex = self.origin if self.apex is None else self.apex
            self.plain = self.origin == self.apex
            tally.skip(number, "zone directive", line)
        elif directive == "$TTL":
            tally.skip(number, "zone directive", line)
        else:
            tally.reject(number, "unsupported directive", line)

    def _absolute(self, owner: str) -> str:
        """An owner text -> absolute name without the trailing dot."""
        if owner == "@":
            return self.origin
        if owner.endswith("."):
            return owner[:-1]
        return f"{owner}.{self.origin}" if self.origin else owner

    def _trigger(self, name: str) -> str:
        """The trigger name of an absolute name: relative to the apex ("." when outside the zone)."""
        apex = self.apex
        if not apex:
            return name
        if name == apex:
            return ""
        if name.endswith(apex) and name[-len(apex) - 1] == ".":
            return name[: -len(apex) - 1]
        return "."


# --- dispatch ------------------------------------------------------------------------------


def parse_list(fmt: str, lines: Iterable[str], tally: Tally | None = None, match: str | None = None) -> Iterator[Entry]:
    """The parser of a format name; `match` applies to domains and hosts only (default subtree)."""
    if fmt == "domains":
        return parse_domains(lines, tally, match=match or SUBTREE)
    if fmt == "hosts":
        return parse_hosts(lines, tally, match=match or SUBTREE)
    if fmt == "adblock":
        return parse_adblock(lines, tally)
    if fmt == "rpz":
        return parse_rpz(lines, tally)
    raise ValueError(f"unknown list format {fmt!r}")


def parse_list_runs(
    fmt: str, file: TextIO, tally: Tally | None = None, match: str | None = None
) -> dict[tuple[str, str], list[str]]:
    """`parse_list` of an open text file, as {(match, kind): names} for `domains.build_index_runs`.

    The domains format (the usual huge list) goes straight into runs (`parse_domains_text`); the
    others are parsed line by line and their entries grouped by (match, kind). Same entries and
    tally as `parse_list` either way.
    """
    if fmt == "domains":
        return parse_domains_text(file.read(), tally, match=match or SUBTREE)
    runs: dict[tuple[str, str], list[str]] = {}
    for key, entries in groupby(parse_list(fmt, file, tally, match), key=itemgetter(1, 2)):
        runs.setdefault(key, []).extend(map(itemgetter(0), entries))
    return runs
