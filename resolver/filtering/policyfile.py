"""Reading policies/*.yaml (province baseline and school files) into policy values, reporting every problem."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import logging
import re
import zoneinfo
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resolver import yamlfile
from resolver.filtering import policy, safesearch

log = logging.getLogger(__name__)

PROVINCE_FILE = "province.yaml"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
DEFAULT_BLOCKED_TTL_SECONDS = 60.0
MAX_BLOCKED_TTL_SECONDS = 86400.0

_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
#: school ids are metric labels; `unknown` is the label for unmatched clients.
RESERVED_IDS = frozenset({"unknown", "province"})


@dataclasses.dataclass(frozen=True, slots=True)
class _Placed:
    """A configured network and where it was written (for the duplicate check across files)."""

    network: policy.Network
    owner: str
    file: str
    line: int
    key: yamlfile.Key


def load_policies(
    policies_dir: Path,
    categories: Sequence[str],
    table: safesearch.SafeSearchTable | None = None,
    shown_as: Path | None = None,
) -> policy.Policies:
    """province.yaml plus every other *.yaml in the directory (each a school); one ConfigError for all problems.

    `categories[i]` is the category of bit i in the domain index's masks; `table` defaults to the
    shipped resolver/filtering/data/safe_search.yaml. With `shown_as`, problems and policies name
    their files as if they were in that directory (a staging copy checked for the real one).
    """
    categories = tuple(categories)
    table = table or safesearch.default_table()
    shown = shown_as or policies_dir
    problems: list[yamlfile.Problem] = []
    province: policy.Province | None = None
    try:
        doc = yamlfile.load_yaml(policies_dir / PROVINCE_FILE, str(shown / PROVINCE_FILE))
        province = _read_province(doc, categories, table)
        problems += doc.problems
    except yamlfile.ConfigError as exc:
        problems += exc.problems
    try:
        paths = sorted(policies_dir.iterdir())
    except OSError as exc:
        problems.append(yamlfile.Problem(str(shown), 1, "", f"cannot read directory: {exc}"))
        paths = []
    schools: list[policy.SchoolPolicy] = []
    placed: list[_Placed] = []
    servers: set[tuple[str, int]] = set()  # distinct forward servers so far (policy.MAX_FORWARD_SERVERS)
    if province is not None:
        servers.update(s for zone in province.forward_zones.values() for s in zone.servers)
    for path in paths:
        if path.name == PROVINCE_FILE or path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".yml":
            problems.append(
                yamlfile.Problem(
                    str(shown / path.name), 1, "", f"policy files end in .yaml: rename it to {path.stem}.yaml"
                )
            )
            continue
        if path.suffix != ".yaml":
            continue
        try:
            doc = yamlfile.load_yaml(path, str(shown / path.name))
        except yamlfile.ConfigError as exc:
            problems += exc.problems
            continue
        school, networks = _read_school(doc, categories, province)
        if school is not None:
            servers.update(s for zone in school.forward_zones.values() for s in zone.servers)
            if len(servers) > policy.MAX_FORWARD_SERVERS:
                doc.fail(
                    ("forward_zones",),
                    f"more than {policy.MAX_FORWARD_SERVERS} distinct forward servers across all policy files "
                    "(each is an upstream with its own sockets in every worker)",
                )
                servers.clear()  # reported once
        problems += doc.problems
        placed += networks
        if school is not None:
            schools.append(school)
    problems += _duplicates(placed)
    if problems:
        raise yamlfile.ConfigError(problems)
    assert province is not None
    log.debug("loaded %d school policies from %s", len(schools), shown)
    return policy.Policies(province=province, schools=tuple(schools), by_id={s.id: s for s in schools})


def parse_province(
    text: str, file: str, categories: Sequence[str], table: safesearch.SafeSearchTable | None = None
) -> policy.Province:
    """Parse province.yaml text (tests, `schooldns check`); ConfigError on any problem."""
    doc = yamlfile.parse_yaml(text, file)
    province = _read_province(doc, tuple(categories), table or safesearch.default_table())
    doc.raise_if_failed()
    return province


def parse_school(text: str, file: str, categories: Sequence[str], province: policy.Province) -> policy.SchoolPolicy:
    """Parse one school file's text against a province; the file stem must equal the school id."""
    doc = yamlfile.parse_yaml(text, file)
    school, networks = _read_school(doc, tuple(categories), province)
    doc.problems += _duplicates(networks)
    doc.raise_if_failed()
    assert school is not None
    return school


def load_timezone(policies_dir: Path) -> datetime.tzinfo:
    """province.yaml's time zone alone, without the rest of the policies (for the daily rollups); ConfigError."""
    doc = yamlfile.load_yaml(policies_dir / PROVINCE_FILE)
    top = doc.section()
    tz = _zone(top, top.typed("timezone", str, DEFAULT_TIMEZONE))
    doc.raise_if_failed()  # the other keys are left to load_policies
    return tz  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# province.yaml


def _read_province(
    doc: yamlfile.Document, categories: tuple[str, ...], table: safesearch.SafeSearchTable
) -> policy.Province:
    top = doc.section()
    mandatory = [c for c, _ in _categories(top, "mandatory", categories)]
    timezone = top.typed("timezone", str, DEFAULT_TIMEZONE)
    tz = _zone(top, timezone)
    info_url = top.typed("info_url", str, "", check=_check_url)
    blocked_ttl_seconds = top.typed(
        "blocked_ttl_seconds",
        (int, float),
        DEFAULT_BLOCKED_TTL_SECONDS,
        check=lambda v: (
            None if 0 <= v <= MAX_BLOCKED_TTL_SECONDS else f"expected 0 to {MAX_BLOCKED_TTL_SECONDS:g} seconds, got {v}"
        ),
    )
    action = _action(top, "action") or policy.Action.NXDOMAIN
    safe_search = top.typed("safe_search", bool, True)
    youtube = _youtube(top, "safe_search_youtube") or safesearch.YouTubeMode.MODERATE
    bypass_prevention = top.typed("bypass_prevention", bool, True)
    blockpage = _blockpage(top) if top.has("blockpage") else None
    forward_zones = _forward_zones(top, policy.Authority.PROVINCE)
    if not top.has("profiles"):
        doc.fail((), "missing required key 'profiles'")
    profiles_section = top.sub("profiles")
    if top.has("profiles") and not profiles_section.values and isinstance(top.values["profiles"], dict | None):
        top.fail("profiles", "give at least one profile: every school's level names one")
    profiles: dict[str, policy.Profile] = {}
    for name in list(profiles_section.values):
        if not _PROFILE_RE.match(name):
            profiles_section.fail(name, f"profile name '{name}' must be lower-case letters, digits, '-' or '_'")
        section = profiles_section.sub(name)
        profiles[name] = policy.Profile(
            name=name,
            block=tuple(c for c, _ in _categories(section, "block", categories)),
            action=_action(section, "action"),
            safe_search=section.typed("safe_search", bool, None),
            safe_search_youtube=_youtube(section, "safe_search_youtube"),
        )
        section.done()
        if profiles[name].action is policy.Action.BLOCKPAGE and blockpage is None:
            section.fail("action", _NEEDS_BLOCKPAGE)
    if action is policy.Action.BLOCKPAGE and blockpage is None:
        top.fail("action", _NEEDS_BLOCKPAGE)
    top.done()
    mask = 0
    for category in mandatory:
        mask |= 1 << categories.index(category)
    return policy.Province(
        file=doc.file,
        mandatory=tuple(mandatory),
        timezone=timezone,
        info_url=info_url,
        profiles=profiles,
        blocked_ttl_seconds=float(blocked_ttl_seconds),
        blockpage=blockpage,
        blockpage_ipv4=_packed(blockpage.ipv4 if blockpage else None),
        blockpage_ipv6=_packed(blockpage.ipv6 if blockpage else None),
        action=action,
        safe_search=safe_search,
        safe_search_youtube=youtube,
        bypass_prevention=bypass_prevention,
        mandatory_mask=mask,
        categories=categories,
        forward_zones={zone.zone: zone for zone in forward_zones},
        tz=tz,
        safe_search_table=table,
    )


_NEEDS_BLOCKPAGE = "action 'blockpage' needs `blockpage: {ipv4: ..., ipv6: ...}` in province.yaml"


def _zone(top: yamlfile.Section, name: str | None) -> Any:
    if name is None:
        return datetime.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = "" if zoneinfo.available_timezones() else " (this system has no time zone database: install tzdata)"
        top.fail("timezone", f"unknown time zone '{name}', expected an IANA name like Asia/Ho_Chi_Minh{hint}")
        return datetime.UTC


def _blockpage(top: yamlfile.Section) -> policy.Blockpage | None:
    section = top.sub("blockpage")
    ipv4 = section.typed("ipv4", str, None, check=lambda v: _check_address(v, 4))
    ipv6 = section.typed("ipv6", str, None, check=lambda v: _check_address(v, 6))
    section.done()
    if ipv4 is None and ipv6 is None:
        if not section.values and isinstance(top.values["blockpage"], dict | None):  # else already reported
            top.fail("blockpage", "give the block page's ipv4, ipv6 or both")
        return None
    return policy.Blockpage(
        ipv4=ipv4 and str(ipaddress.ip_address(ipv4)), ipv6=ipv6 and str(ipaddress.ip_address(ipv6))
    )


def _packed(address: str | None) -> bytes | None:
    return ipaddress.ip_address(address).packed if address else None


def _check_address(value: str, version: int) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is None or address.version != version:
        return f"'{value}' is not an IPv{version} address"
    return None


def _check_url(value: str) -> str | None:
    if value.startswith(("http://", "https://")) and len(value) > len("https://"):
        return None
    return f"'{value}' is not an http:// or https:// URL"


# ---------------------------------------------------------------------------------------------
# <school-id>.yaml


def _read_school(
    doc: yamlfile.Document,
    categories: tuple[str, ...],
    province: policy.Province | None,
) -> tuple[policy.SchoolPolicy | None, list[_Placed]]:
    """The compiled school (None if its file or the province has problems) and its networks."""
    top = doc.section()
    file_name = Path(doc.file).name
    stem = Path(doc.file).stem
    school_id = top.typed("id", str, check=_check_id)
    if school_id is not None and school_id != stem:
        top.fail(
            "id",
            f"id '{school_id}' does not match the file name '{file_name}' "
            f"(name the file {school_id}.yaml, or change id to '{stem}')",
        )
    owner = school_id or stem
    name = top.typed("name", str, owner)
    level = top.typed("level", str)
    profile = None
    if level is not None and province is not None:
        profile = province.profiles.get(level)
        if profile is None:
            top.fail(
                "level",
                f"unknown level '{level}'{_did_you_mean(level, province.profiles)} "
                f"(profiles in {PROVINCE_FILE}: {', '.join(province.profiles)})",
            )
    networks, placed = _networks(top, owner)
    block = _categories(top, "block", categories)
    unblock = _categories(top, "unblock", categories)
    blocked_names = {c for c, _ in block}
    for category, key in unblock:
        if province is not None and category in province.mandatory:
            doc.fail(key, f"category '{category}' is mandatory in {PROVINCE_FILE} and cannot be unblocked")
        elif category in blocked_names:
            doc.fail(key, f"category '{category}' is in both block and unblock")
    allow = _domains(top, "allow")
    deny = _domains(top, "deny")
    defaults = province or _FALLBACK_DEFAULTS
    safe_search = top.typed("safe_search", bool, _first(profile and profile.safe_search, defaults.safe_search))
    youtube = _youtube(top, "safe_search_youtube") or _first(
        profile and profile.safe_search_youtube, defaults.safe_search_youtube
    )
    schedules = _schedules(top, categories)
    action = _action(top, "action") or _first(profile and profile.action, defaults.action)
    if top.has("action") and action is policy.Action.BLOCKPAGE and province and province.blockpage is None:
        top.fail("action", _NEEDS_BLOCKPAGE)
    forward_zones = _forward_zones(top, policy.Authority.SCHOOL)
    top.done()
    if province is None or profile is None or doc.problems or school_id is None:
        return None, placed
    school = policy.compile_school(
        id=school_id,
        name=name,
        level=level,
        file=doc.file,
        networks=networks,
        block=[c for c, _ in block],
        unblock=[c for c, _ in unblock],
        allow=allow,
        deny=deny,
        safe_search=safe_search,
        safe_search_youtube=youtube,
        schedules=schedules,
        action=action,
        province=province,
        forward_zones=forward_zones,
    )
    return school, placed


@dataclasses.dataclass(frozen=True, slots=True)
class _Defaults:
    safe_search: bool
    safe_search_youtube: safesearch.YouTubeMode
    action: policy.Action


# Used only to keep reading a school file when province.yaml itself could not be read.
_FALLBACK_DEFAULTS = _Defaults(True, safesearch.YouTubeMode.MODERATE, policy.Action.NXDOMAIN)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _check_id(value: str) -> str | None:
    if not _ID_RE.match(value):
        return (
            f"id '{value}' must be lower-case letters, digits and '-' (at most 63, not starting or "
            f"ending with '-'), e.g. thpt-nguyen-du"
        )
    if value in RESERVED_IDS:
        return f"id '{value}' is reserved"
    return None


def _networks(top: yamlfile.Section, owner: str) -> tuple[list[policy.Network], list[_Placed]]:
    doc = top.doc
    networks: list[policy.Network] = []
    placed: list[_Placed] = []
    for text, key in _strings(top, "networks"):
        try:
            network = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                doc.fail(key, f"'{text}' is not an IPv4 or IPv6 network (e.g. 203.0.113.0/28 or 2001:db8:12::/48)")
            else:
                doc.fail(key, f"'{text}' has host bits set: did you mean {loose}?")
            continue
        if (
            isinstance(network, ipaddress.IPv6Network)
            and network.network_address.ipv4_mapped
            and network.prefixlen >= 96
        ):
            mapped = ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
            doc.fail(key, f"'{text}' is an IPv4-mapped network: write {mapped} (mapped clients match it)")
            continue
        networks.append(network)
        placed.append(_Placed(network, owner, doc.file, doc.line_of(key), key))
    return networks, placed


def _duplicates(placed: list[_Placed]) -> list[yamlfile.Problem]:
    """Every network given again after its first place, naming both; nesting is allowed (the most specific wins)."""
    problems = []
    first: dict[policy.Network, _Placed] = {}
    for entry in placed:
        earlier = first.setdefault(entry.network, entry)
        if earlier is not entry:
            whose = "the same school" if earlier.file == entry.file else f"school '{earlier.owner}'"
            problems.append(
                yamlfile.Problem(
                    entry.file,
                    entry.line,
                    yamlfile.key_path(entry.key),
                    f"{entry.network} is already a network of {whose} ({earlier.file}:{earlier.line}); "
                    "a network belongs to one school",
                )
            )
    return problems


def _forward_zones(top: yamlfile.Section, authority: policy.Authority) -> list[policy.ForwardZone]:
    """`forward_zones: {zone: [IP[:port], ...]}`: names under each zone go to those servers, not the upstreams."""
    section = top.sub("forward_zones")
    zones: dict[str, policy.ForwardZone] = {}
    for written, value in list(section.values.items()):
        key: yamlfile.Key = (*section.key, written)
        try:
            zone = policy.normalize_name(str(written))
        except ValueError as exc:
            section.doc.fail(key, str(exc))
            zone = ""
        if zone in zones:
            section.doc.fail(key, f"zone '{zone}' is given twice")
        servers: dict[tuple[str, int], None] = {}
        for text, server_key in _strings(section, written):
            problem, server = _forward_server(text)
            if server is None:
                section.doc.fail(server_key, problem)
            elif server in servers:
                section.doc.fail(server_key, f"server '{text}' is given twice for zone '{written}'")
            else:
                servers[server] = None
        if value is None or (isinstance(value, list) and not value):
            section.doc.fail(key, f"give at least one server for zone '{written}', e.g. [\"10.1.2.3\"]")
        if zone and servers and zone not in zones:
            zones[zone] = policy.ForwardZone(zone, tuple(servers), authority)
    return list(zones.values())


def _forward_server(text: str) -> tuple[str, tuple[str, int] | None]:
    """'10.1.2.3', '10.1.2.3:5353', '2001:db8::53' or '[2001:db8::53]:5353' -> (host, port); else the problem."""
    value = text.strip()
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("" if rest else "53")
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"'{text}' is not a server address IP[:port] (e.g. 10.1.2.3 or 10.1.2.3:5353)", None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"'{text}': the port must be 1-65535", None
    if address.is_unspecified or address.is_multicast:
        return f"'{text}' cannot be a DNS server's address", None
    return "", (str(address), int(port))


def _schedules(top: yamlfile.Section, categories: tuple[str, ...]) -> list[policy.Schedule]:
    schedules = []
    names: set[str] = set()
    for key, item in top.items("schedules"):
        if not isinstance(item, dict):
            top.doc.fail(key, f"expected a schedule (a mapping with from, to and block), got {yamlfile.describe(item)}")
            continue
        section = top.doc.section(key)
        index = key[-1]
        name = section.typed("name", str, f"schedule-{index + 1 if isinstance(index, int) else index}")
        if name in names:
            section.fail("name", f"schedule name '{name}' is used twice")
        names.add(name)
        days = _days(section)
        start = _time(section, "from", allow_24=False)
        end = _time(section, "to", allow_24=True)
        if not section.has("block"):
            section.doc.fail(key, "missing required key 'block'")
        block = [c for c, _ in _categories(section, "block", categories)]
        if section.has("block") and not block and not section.values.get("block"):
            section.fail("block", "a schedule must block at least one category")
        if start is not None and end is not None and start == end:
            section.fail(
                "to",
                f"'to' equals 'from' ({_hhmm(start)}): the window is empty "
                f'(for a whole day write from: "00:00", to: "24:00")',
            )
            start = None
        section.done()
        if start is None or end is None or not days or not block:
            continue
        mask = 0
        for category in block:
            mask |= 1 << categories.index(category)
        schedules.append(
            policy.Schedule(name=name, days=days, from_minute=start, to_minute=end, block=tuple(block), mask=mask)
        )
    return schedules


def _days(section: yamlfile.Section) -> tuple[int, ...]:
    if not section.has("days"):
        return tuple(range(7))
    days: set[int] = set()
    for text, key in _strings(section, "days"):
        day = text.strip().lower()[:3]
        if day in policy.DAYS and text.strip().lower() in (day, _FULL_DAYS[policy.DAYS.index(day)]):
            days.add(policy.DAYS.index(day))
        else:
            section.doc.fail(key, f"unknown day '{text}' (expected {', '.join(policy.DAYS)})")
    if not days and not section.values.get("days"):
        section.fail("days", "give at least one day, or leave days out for every day")
    return tuple(sorted(days))


_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _time(section: yamlfile.Section, key: str, *, allow_24: bool) -> int | None:
    value = section.raw(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        section.fail(
            key, f'write the time in quotes, like "07:00" (YAML read the unquoted value as the number {value})'
        )
        return None
    match = _TIME_RE.match(value.strip()) if isinstance(value, str) else None
    if match:
        hour, minute = int(match[1]), int(match[2])
        if (hour < 24 and minute < 60) or (allow_24 and hour == 24 and minute == 0):
            return hour * 60 + minute
    upper = "24:00" if allow_24 else "23:59"
    section.fail(key, f'expected a time "HH:MM" from 00:00 to {upper}, got {value!r}')
    return None


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Shared readers


def _strings(section: yamlfile.Section, name: str) -> list[tuple[str, yamlfile.Key]]:
    """A list of strings; an empty value (`block:`) reads as an empty list."""
    if section.has(name) and section.values[name] is None:
        section.raw(name)
        return []
    return section.string_list(name)


def _categories(
    section: yamlfile.Section,
    name: str,
    categories: tuple[str, ...],
) -> list[tuple[str, yamlfile.Key]]:
    out: list[tuple[str, yamlfile.Key]] = []
    seen: set[str] = set()
    for text, key in _strings(section, name):
        if text not in categories:
            section.doc.fail(
                key,
                f"unknown category '{text}'{_did_you_mean(text, categories)} "
                f"(known categories: {', '.join(categories)})",
            )
        elif text not in seen:
            seen.add(text)
            out.append((text, key))
    return out


def _domains(section: yamlfile.Section, name: str) -> list[str]:
    out: dict[str, None] = {}
    for text, key in _strings(section, name):
        try:
            out[policy.normalize_name(text)] = None
        except ValueError as exc:
            section.doc.fail(key, str(exc))
    return list(out)


def _action(section: yamlfile.Section, key: str) -> policy.Action | None:
    value = section.typed(key, str, None)
    if value is None:
        return None
    if value in policy.YAML_ACTIONS:
        return policy.Action(value)
    section.fail(key, f"unknown action '{value}' (expected one of {', '.join(policy.YAML_ACTIONS)})")
    return None


def _youtube(section: yamlfile.Section, key: str) -> safesearch.YouTubeMode | None:
    if section.raw(key, None) is False:  # YAML 1.1 reads an unquoted `off` as false
        return safesearch.YouTubeMode.OFF
    value = section.typed(key, str, None)
    if value is None:
        return None
    try:
        return safesearch.YouTubeMode(value)
    except ValueError:
        section.fail(
            key,
            f"unknown YouTube mode '{value}' (expected one of {', '.join(m.value for m in safesearch.YouTubeMode)})",
        )
        return None


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
