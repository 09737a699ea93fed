"""Per-school policy: the model (province, profiles, schools, schedules) and the pure per-query decide() / explain()."""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import enum
import functools
import ipaddress
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from resolver.filtering import listformats, localzones, safesearch

#: Block.category values that are not list categories (metrics add these to the category label set).
BYPASS_CATEGORY = "bypass"
DENY_CATEGORY = "deny"
SAFE_SEARCH_CATEGORY = "safe_search"
EXTRA_CATEGORIES = (BYPASS_CATEGORY, DENY_CATEGORY, SAFE_SEARCH_CATEGORY)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.StrEnum):
    """How a blocked name is answered."""

    #: NXDOMAIN with an SOA (negative TTL = blocked TTL) and an EDE.
    NXDOMAIN = "nxdomain"
    #: A 0.0.0.0 / AAAA :: (other types NODATA).
    NULL_IP = "null_ip"
    #: A/AAAA of the province block page (province `blockpage`).
    BLOCKPAGE = "blockpage"
    #: REFUSED.
    REFUSED = "refused"
    #: NOERROR, no answer: used for DDR names under resolver.arpa (RFC 9462); not settable in YAML.
    NODATA = "nodata"


#: Actions a policy file may choose.
YAML_ACTIONS = (Action.NXDOMAIN, Action.NULL_IP, Action.BLOCKPAGE, Action.REFUSED)


class Authority(enum.StrEnum):
    """Who asked for a block; the pipeline maps it to the EDE code (16 / 17 / 15)."""

    #: Mandatory categories and bypass prevention: EDE 16 Censored.
    PROVINCE = "province"
    #: Categories chosen by the school's profile, its block list, its schedules, safe search: EDE 17 Filtered.
    SCHOOL = "school"
    #: An explicit deny entry: EDE 15 Blocked.
    DENY = "deny"


@dataclasses.dataclass(frozen=True, slots=True)
class Allow:
    """Forward the query (use the ALLOW singleton)."""


ALLOW = Allow()


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    """Answer with `action`; `category` is a metric label, `reason` short text for explain and logs only."""

    category: str
    authority: Authority
    action: Action
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Rewrite:
    """Safe search: answer with a CNAME to `target` plus the target's addresses."""

    target: str


Decision = Allow | Block | Rewrite

# Bypass prevention: names through which clients switch to encrypted DNS that the filter cannot
# see. Fixed actions: Firefox needs NXDOMAIN for its canary, Apple documents NXDOMAIN for Private
# Relay, and RFC 9462 names get NODATA so clients do not discover the upstream's encrypted
# endpoints through us.
_BYPASS_BLOCKS: dict[str, Block] = {
    "use-application-dns.net": Block(
        BYPASS_CATEGORY, Authority.PROVINCE, Action.NXDOMAIN, "Firefox DNS-over-HTTPS canary"
    ),
    **{
        host: Block(BYPASS_CATEGORY, Authority.PROVINCE, Action.NXDOMAIN, "iCloud Private Relay")
        for host in ("mask.icloud.com", "mask-h2.icloud.com", "mask-canary.icloud.com")
    },
}
_DDR_BLOCK = Block(
    BYPASS_CATEGORY, Authority.PROVINCE, Action.NODATA, "resolver discovery (DDR, resolver.arpa, RFC 9462)"
)
BYPASS_NAMES = (*_BYPASS_BLOCKS, "resolver.arpa")


@dataclasses.dataclass(frozen=True, slots=True)
class Blockpage:
    """Addresses answered for the `blockpage` action."""

    ipv4: str | None
    ipv6: str | None


#: Distinct forward servers across province.yaml and every school: each is an upstream with its own sockets.
MAX_FORWARD_SERVERS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardZone:
    """A zone whose names go to the school's own DNS servers (an intranet, a private reverse zone)."""

    zone: str
    #: (IP address, port), in the order written
    servers: tuple[tuple[str, int], ...]
    #: SCHOOL (the school's file) or PROVINCE (province.yaml, for every school)
    authority: Authority
    #: appended to the answer cache key: a forwarded answer is cached for its school only
    cache_suffix: bytes = b""

    def describe(self) -> str:
        return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.servers)


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """An age-tiered baseline in province.yaml; None fields inherit the province default."""

    name: str
    block: tuple[str, ...]
    action: Action | None
    safe_search: bool | None
    safe_search_youtube: safesearch.YouTubeMode | None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Province:
    """province.yaml: mandatory categories, profiles, and defaults for every school."""

    file: str
    mandatory: tuple[str, ...]
    timezone: str
    #: the block page / information URL named in the EDE text ("" when not configured)
    info_url: str
    profiles: Mapping[str, Profile]
    blocked_ttl_seconds: float
    blockpage: Blockpage | None
    #: the block page addresses packed for the wire (None when not configured)
    blockpage_ipv4: bytes | None = dataclasses.field(repr=False)
    blockpage_ipv6: bytes | None = dataclasses.field(repr=False)
    action: Action
    safe_search: bool
    safe_search_youtube: safesearch.YouTubeMode
    bypass_prevention: bool
    mandatory_mask: int
    categories: tuple[str, ...] = dataclasses.field(repr=False)
    #: forward zones of every school (a school's own entry for the same zone replaces it)
    forward_zones: Mapping[str, ForwardZone] = dataclasses.field(repr=False)
    tz: zoneinfo.ZoneInfo = dataclasses.field(repr=False)
    safe_search_table: safesearch.SafeSearchTable = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A weekly window in province time: `from` inclusive, `to` exclusive; to <= from ends the next day."""

    name: str
    days: tuple[int, ...]  # 0 = Monday ... 6 = Sunday; the day the window starts
    from_minute: int  # minutes after local midnight
    to_minute: int  # 1..1440
    block: tuple[str, ...]
    mask: int

    def describe(self) -> str:
        days = ",".join(DAYS[d] for d in self.days)
        return f"{days} {_hhmm(self.from_minute)}-{_hhmm(self.to_minute)}"


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class SchoolPolicy:
    """One school's compiled policy; compared and hashed by identity (its tables are dicts)."""

    id: str
    name: str
    level: str
    file: str
    networks: tuple[Network, ...]
    block: tuple[str, ...]
    unblock: tuple[str, ...]
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    safe_search: bool
    safe_search_youtube: safesearch.YouTubeMode
    schedules: tuple[Schedule, ...]
    action: Action
    bypass_prevention: bool
    #: mandatory categories as a domain-index mask
    mandatory_mask: int
    #: profile + block - unblock (schedules add to it at their times)
    base_mask: int
    province: Province = dataclasses.field(repr=False)
    # Load-time tables for decide(); see compile_school().
    rules: Mapping[str, Allow | Block] = dataclasses.field(repr=False)
    mandatory_blocks: Mapping[int, Block] = dataclasses.field(repr=False)
    category_blocks: Mapping[int, Block] = dataclasses.field(repr=False)
    schedule_blocks: Mapping[tuple[int, int], Block] = dataclasses.field(repr=False)
    #: every category this school can block at some time (base | all schedules)
    any_time_mask: int = dataclasses.field(repr=False)
    week_starts: tuple[int, ...] = dataclasses.field(repr=False)
    week_masks: tuple[int, ...] = dataclasses.field(repr=False)
    week_active: tuple[tuple[int, ...], ...] = dataclasses.field(repr=False)
    safe_rewrites: Mapping[str, Rewrite] = dataclasses.field(repr=False)
    safe_blocks_exact: Mapping[str, Block] = dataclasses.field(repr=False)
    safe_blocks_subtree: Mapping[str, Block] = dataclasses.field(repr=False)
    #: zone -> where its names are forwarded (the province's and the school's own)
    forward_zones: Mapping[str, ForwardZone] = dataclasses.field(repr=False)
    #: the forward zones' names, for one str.endswith before the lookup (empty: nothing forwarded)
    forward_suffixes: tuple[str, ...] = dataclasses.field(repr=False)

    def forward_zone(self, name: str) -> ForwardZone | None:
        """The most specific forward zone that is `name` or one of its parents, else None."""
        return _match_subtree(self.forward_zones, name)

    def blocked_mask_at(self, now_epoch_seconds: float) -> int:
        """Categories blocked at this time (mandatory excluded): profile + block - unblock + active schedules."""
        if len(self.week_starts) == 1:
            return self.week_masks[0]
        return self.week_masks[self._segment_at(now_epoch_seconds)]

    def active_schedules(self, now_epoch_seconds: float) -> tuple[str, ...]:
        """Names of the schedules whose window contains this time."""
        if not self.schedules:
            return ()
        return tuple(self.schedules[i].name for i in self.week_active[self._segment_at(now_epoch_seconds)])

    def schedule_segment(self, now_epoch_seconds: float) -> int:
        """Which stretch of the week between two schedule boundaries this time falls in.

        decide() depends on the time only through this number (always 0 without schedules), so a
        decision, and an answer kept from it, holds until the next schedule boundary.
        """
        if len(self.week_starts) == 1:
            return 0
        return self._segment_at(now_epoch_seconds)

    def _segment_at(self, now_epoch_seconds: float) -> int:
        local = datetime.datetime.fromtimestamp(now_epoch_seconds, self.province.tz)
        minute = local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute
        return bisect.bisect_right(self.week_starts, minute) - 1


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Policies:
    """Everything in policies/: the province baseline and every school."""

    province: Province
    schools: tuple[SchoolPolicy, ...]
    by_id: Mapping[str, SchoolPolicy] = dataclasses.field(repr=False)

    def school(self, school_id: str) -> SchoolPolicy | None:
        return self.by_id.get(school_id)

    def networks(self) -> Iterator[tuple[Network, SchoolPolicy]]:
        """(network, school) pairs, the input of schools.SchoolDirectory.build()."""
        for school in self.schools:
            for network in school.networks:
                yield network, school


# ---------------------------------------------------------------------------------------------
# The per-query decision


def decide(school: SchoolPolicy, name: str, list_mask: int, now_epoch_seconds: float) -> Decision:
    """The decision for one name at one time; `name` is a lower-case A-label without trailing dot.

    Pure: the result depends only on the arguments, and on the time only through
    `school.schedule_segment(time)`; the pipeline keeps answers (repeats) while the segment stays.
    """
    # Hot path: a few dict lookups and bit operations; every table was built at load time.
    if school.bypass_prevention:
        block = _BYPASS_BLOCKS.get(name)
        if block is not None:
            return block
        if name.endswith(".resolver.arpa") or name == "resolver.arpa":
            return _DDR_BLOCK
    hit = list_mask & school.mandatory_mask  # mandatory_block(), inlined: a call here costs every query
    if hit:
        return school.mandatory_blocks[hit & -hit]  # lowest bit: the first category in list order
    allowed = False
    if school.rules:
        rule = _match_subtree(school.rules, name)
        if rule is ALLOW:
            allowed = True
        elif rule is not None:
            return rule  # a deny entry's Block
    if not allowed:
        hit = list_mask & school.any_time_mask  # only look at the clock if a blockable category is listed
        if hit:
            hit &= school.blocked_mask_at(now_epoch_seconds)
            if hit:
                return _category_block(school, hit & -hit, now_epoch_seconds)
    if school.safe_search:
        rewrite = school.safe_rewrites.get(name)
        if rewrite is not None:
            return rewrite  # an allow entry does not switch safe search off: that is safe_search: false
        if not allowed:
            block = school.safe_blocks_exact.get(name)
            if block is not None:
                return block
            if school.safe_blocks_subtree:
                block = _match_subtree(school.safe_blocks_subtree, name)
                if block is not None:
                    return block
    return ALLOW


def mandatory_block(school: SchoolPolicy, list_mask: int) -> Block | None:
    """The block of a mandatory category among a name's categories (`list_mask`), else None.

    The pipeline checks every name of a CNAME / HTTPS chain against it, also for a name the school
    allows: mandatory categories bind on every name, allow entries or not.
    """
    hit = list_mask & school.mandatory_mask
    return school.mandatory_blocks[hit & -hit] if hit else None


def is_explicitly_allowed(school: SchoolPolicy, name: str) -> bool:
    """True if the most specific allow/deny entry covering `name` is an allow entry.

    The pipeline checks the CNAME chain of such names only for mandatory categories: the school
    vouched for them.
    """
    return bool(school.rules) and _match_subtree(school.rules, name) is ALLOW


_Value = TypeVar("_Value")


def _match_subtree(table: Mapping[str, _Value], name: str) -> _Value | None:
    """The value of the most specific key that is `name` or one of its parents, else None."""
    # Hot path: one dict probe per label.
    value = table.get(name)
    if value is not None:
        return value
    dot = name.find(".")
    while dot >= 0:
        value = table.get(name[dot + 1 :])
        if value is not None:
            return value
        dot = name.find(".", dot + 1)
    return None


def _category_block(school: SchoolPolicy, bit: int, now_epoch_seconds: float) -> Block:
    if bit & school.base_mask:
        return school.category_blocks[bit]
    for index in school.week_active[school._segment_at(now_epoch_seconds)]:
        if school.schedules[index].mask & bit:
            return school.schedule_blocks[(index, bit)]
    return school.category_blocks[bit]  # unreachable while the week tables are consistent


# ---------------------------------------------------------------------------------------------
# Explain: the same decision, with the reasoning spelled out (CLI `schooldns explain`, admin API)


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    """Why decide() answered what it did for one school, name and time."""

    school: str
    name: str
    decision: Decision
    rule: str
    local_time: str
    listed_categories: tuple[str, ...]
    blocked_categories: tuple[str, ...]
    active_schedules: tuple[str, ...]
    allow_or_deny_entry: str | None
    #: who answers an allowed name that is not sent to the upstreams (a forward zone, a local zone); None: upstream
    answered_by: str | None = None

    def lines(self) -> list[str]:
        return [
            f"school: {self.school}",
            f"name: {self.name}",
            f"time: {self.local_time}",
            f"decision: {describe_decision(self.decision)}",
            f"rule: {self.rule}",
            f"listed in: {', '.join(self.listed_categories) or '-'}",
            f"blocked now: {', '.join(self.blocked_categories) or '-'}",
            f"active schedules: {', '.join(self.active_schedules) or '-'}",
            f"allow/deny entry: {self.allow_or_deny_entry or '-'}",
            *([f"answered by: {self.answered_by}"] if self.answered_by else []),
        ]


def describe_decision(decision: Decision) -> str:
    if isinstance(decision, Block):
        return f"block ({decision.action}, category {decision.category}, authority {decision.authority})"
    if isinstance(decision, Rewrite):
        return f"rewrite (CNAME {decision.target})"
    return "allow"


def explain(school: SchoolPolicy, name: str, list_mask: int, now_epoch_seconds: float) -> Explanation:
    """decide() plus the context an admin needs: the rule, categories, schedules and local time."""
    decision = decide(school, name, list_mask, now_epoch_seconds)
    categories = school.province.categories
    blocked_mask = school.mandatory_mask | school.blocked_mask_at(now_epoch_seconds)
    entry = _match_subtree_key(school.rules, name) if school.rules else None
    if isinstance(decision, Block):
        rule = decision.reason
    elif isinstance(decision, Rewrite):
        engine = school.province.safe_search_table.engine_of(name) or "?"
        rule = f"safe search ({engine}): {name} -> {decision.target}"
    elif entry is not None and school.rules[entry] is ALLOW:
        rule = f"allow entry '{entry}'"
        if list_mask & blocked_mask:
            rule += f" (overrides {', '.join(_names(list_mask & blocked_mask, categories))})"
    elif not school.bypass_prevention and (
        name in _BYPASS_BLOCKS or name == "resolver.arpa" or name.endswith(".resolver.arpa")
    ):
        rule = "bypass prevention is off in province.yaml"
    elif list_mask:
        rule = "listed, but none of its categories is blocked for this school now"
    else:
        rule = "no rule matched"
    local = datetime.datetime.fromtimestamp(now_epoch_seconds, school.province.tz)
    return Explanation(
        school=school.id,
        name=name,
        decision=decision,
        rule=rule,
        local_time=f"{local:%Y-%m-%d %H:%M} {DAYS[local.weekday()]} ({school.province.timezone})",
        listed_categories=_names(list_mask, categories),
        blocked_categories=_names(blocked_mask, categories),
        active_schedules=school.active_schedules(now_epoch_seconds),
        allow_or_deny_entry=entry,
        answered_by=answered_by(school, name, decision),
    )


def answered_by(school: SchoolPolicy, name: str, decision: Decision) -> str | None:
    """Who answers an allowed name for the school, in the pipeline's order: a forward zone, a local zone; else None."""
    if decision is not ALLOW:
        return None  # blocked, or safe search: answered as every other school's
    forward = school.forward_zone(name)
    if forward is not None:
        whose = "this school's" if forward.authority == Authority.SCHOOL else "the province's"
        return f"the school's own DNS servers {forward.describe()} ({whose} forward zone '{forward.zone}')"
    local = localzones.lookup(name)
    if local is not None:
        return f"schooldns itself (locally served zone '{local.zone}', {local.source}; never sent upstream)"
    return None


def _match_subtree_key(table: Mapping[str, Any], name: str) -> str | None:
    labels = name.split(".")
    for i in range(len(labels)):
        suffix = ".".join(labels[i:])
        if suffix in table:
            return suffix
    return None


def _names(mask: int, categories: Sequence[str]) -> tuple[str, ...]:
    return tuple(category for bit, category in enumerate(categories) if mask >> bit & 1)


def category_mask(names: Sequence[str], categories: Sequence[str]) -> int:
    """The domain-index mask of some category names (a test and CLI helper)."""
    index = {category: bit for bit, category in enumerate(categories)}
    mask = 0
    for name in names:
        mask |= 1 << index[name]
    return mask


# ---------------------------------------------------------------------------------------------
# Names


def normalize_name(text: str) -> str:
    """A policy entry or queried name as a lower-case A-label (listformats' rules); ValueError if invalid."""
    name = text.strip()
    if "://" in name or "/" in name:
        raise ValueError(f"'{text}' is a URL; write only the domain name, e.g. 'example.com'")
    if name.startswith("*."):
        raise ValueError(f"write '{name[2:]}' instead of '{text}': entries already match every name under them")
    try:
        return listformats.normalize_name(name)
    except listformats.InvalidName as exc:
        problem = _NAME_PROBLEMS.get(exc.reason, f"is not a valid domain name ({exc.reason})")
        raise ValueError(f"'{text}' {problem}") from None


_NAME_PROBLEMS = {
    listformats.IP_ADDRESS: "is an IP address, not a domain name",
    "invalid idn": "has an invalid A-label or Unicode label",
    "name too long": "is longer than 253 characters",
}


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Compiling a school's tables (load time)


def compile_school(
    *,
    id: str,
    name: str,
    level: str,
    file: str,
    networks: Sequence[Network],
    block: Sequence[str],
    unblock: Sequence[str],
    allow: Sequence[str],
    deny: Sequence[str],
    safe_search: bool,
    safe_search_youtube: safesearch.YouTubeMode,
    schedules: Sequence[Schedule],
    action: Action,
    province: Province,
    forward_zones: Sequence[ForwardZone] = (),
) -> SchoolPolicy:
    """Build a SchoolPolicy and every lookup table decide() uses; inputs are already validated."""
    categories = province.categories
    bit_of = {category: 1 << i for i, category in enumerate(categories)}
    profile = province.profiles.get(level)
    profile_block = profile.block if profile else ()
    base_mask = 0
    for category in (*profile_block, *block):
        base_mask |= bit_of[category]
    for category in unblock:
        base_mask &= ~bit_of[category]
    base_mask &= ~province.mandatory_mask

    mandatory_blocks = {
        bit_of[c]: Block(c, Authority.PROVINCE, action, f"category '{c}' is mandatory for every school")
        for c in province.mandatory
    }
    category_blocks = {
        bit_of[c]: Block(
            c,
            Authority.SCHOOL,
            action,
            f"category '{c}' is blocked by this school's block list"
            if c in block
            else f"category '{c}' is blocked by profile '{level}'",
        )
        for c in categories
    }
    schedule_blocks = {
        (i, bit_of[c]): Block(
            c, Authority.SCHOOL, action, f"category '{c}' is blocked by schedule '{s.name}' ({s.describe()})"
        )
        for i, s in enumerate(schedules)
        for c in s.block
    }
    any_time_mask = base_mask
    for s in schedules:
        any_time_mask |= s.mask & ~province.mandatory_mask
    week_starts, week_masks, week_active = _compile_week(base_mask, province.mandatory_mask, schedules)

    rules: dict[str, Allow | Block] = {
        entry: Block(DENY_CATEGORY, Authority.DENY, action, f"deny entry '{entry}'") for entry in deny
    }
    rules.update((entry, ALLOW) for entry in allow)  # the same entry in both: allow wins the tie

    table = province.safe_search_table
    safe_rewrites = _rewrite_table(table, safe_search_youtube) if safe_search else {}
    safe_blocks_exact: dict[str, Block] = {}
    safe_blocks_subtree: dict[str, Block] = {}
    if safe_search:
        for row in table.no_safe_mode:
            target = safe_blocks_subtree if row.subtree else safe_blocks_exact
            target[row.name] = Block(
                SAFE_SEARCH_CATEGORY, Authority.SCHOOL, action, f"{row.engine} has no safe search mode ({row.name})"
            )

    # Keyed with the school: an intranet's answers never reach another school through the shared cache.
    suffix = b"\x00forward\x00" + id.encode()
    zones = {
        zone.zone: dataclasses.replace(zone, cache_suffix=suffix)
        for zone in (*province.forward_zones.values(), *forward_zones)
    }

    return SchoolPolicy(
        id=id,
        name=name,
        level=level,
        file=file,
        networks=tuple(networks),
        block=tuple(block),
        unblock=tuple(unblock),
        allow=tuple(allow),
        deny=tuple(deny),
        safe_search=safe_search,
        safe_search_youtube=safe_search_youtube,
        schedules=tuple(schedules),
        action=action,
        bypass_prevention=province.bypass_prevention,
        mandatory_mask=province.mandatory_mask,
        base_mask=base_mask,
        province=province,
        rules=rules,
        mandatory_blocks=mandatory_blocks,
        category_blocks=category_blocks,
        schedule_blocks=schedule_blocks,
        any_time_mask=any_time_mask,
        week_starts=week_starts,
        week_masks=week_masks,
        week_active=week_active,
        safe_rewrites=safe_rewrites,
        safe_blocks_exact=safe_blocks_exact,
        safe_blocks_subtree=safe_blocks_subtree,
        forward_zones=zones,
        forward_suffixes=tuple(zones),
    )


@functools.lru_cache(maxsize=16)
def _rewrite_table(table: safesearch.SafeSearchTable, youtube: safesearch.YouTubeMode) -> dict[str, Rewrite]:
    # Shared by every school with the same mode: one dict per mode, never mutated.
    targets = {target: Rewrite(target) for target in set(table.rewrites_for(youtube).values())}
    return {host: targets[target] for host, target in table.rewrites_for(youtube).items()}


def _compile_week(
    base_mask: int,
    mandatory_mask: int,
    schedules: Sequence[Schedule],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The week as segments: start minute (Monday 00:00 = 0), blocked mask and active schedule indexes."""
    if not schedules:
        return (0,), (base_mask,), ((),)
    intervals: list[tuple[int, int, int]] = []
    for index, schedule in enumerate(schedules):
        length = schedule.to_minute - schedule.from_minute
        if length <= 0:
            length += MINUTES_PER_DAY  # overnight: ends on the next day
        for day in schedule.days:
            start = day * MINUTES_PER_DAY + schedule.from_minute
            end = start + length
            if end <= MINUTES_PER_WEEK:
                intervals.append((start, end, index))
            else:  # Sunday night into Monday morning
                intervals.append((start, MINUTES_PER_WEEK, index))
                intervals.append((0, end - MINUTES_PER_WEEK, index))
    bounds = sorted({0} | {s for s, _, _ in intervals} | {e for _, e, _ in intervals if e < MINUTES_PER_WEEK})
    starts: list[int] = []
    masks: list[int] = []
    actives: list[tuple[int, ...]] = []
    for bound in bounds:
        active = tuple(sorted({i for s, e, i in intervals if s <= bound < e}))
        mask = base_mask
        for i in active:
            mask |= schedules[i].mask
        mask &= ~mandatory_mask
        if starts and masks[-1] == mask and actives[-1] == active:
            continue
        starts.append(bound)
        masks.append(mask)
        actives.append(active)
    return tuple(starts), tuple(masks), tuple(actives)
