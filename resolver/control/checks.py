"""`schooldns check` and `schooldns explain`: everything a reload would do, and why a name is answered as it is."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import zoneinfo
from collections.abc import Sequence
from pathlib import Path

from resolver.control import config, snapshots, tsigkeys
from resolver.dataplane import pipeline
from resolver.errors import UsageError
from resolver.filtering import lists, policy, policyfile, schools


def check(cfg: config.Config, clients: Sequence[str] = ()) -> list[str]:
    """`schooldns check`: everything a reload would do; raises ConfigError; returns a summary.

    Each of `clients` (addresses) adds the lines of client_school(): the school it belongs to.
    """
    addresses = [parse_client(client) for client in clients]  # a typing slip is said before the lists load
    sources = lists.load_sources(cfg.blocklists_dir)
    policies = policyfile.load_policies(cfg.policies_dir, sources.categories)
    compiled = lists.compile_lists(cfg.blocklists_dir)
    default_school = snapshots.find_default_school(cfg, policies)
    directory = schools.SchoolDirectory.build(policies.networks())
    out = [
        f"{len(policies.schools)} schools, {len(compiled.categories)} categories, "
        f"{sum(compiled.entry_counts.values())} list entries"
    ]
    for report in compiled.reports:
        out.append(f"  {report.file}: {report.entries} entries, {report.skipped} skipped, {report.invalid} invalid")
    if cfg.rpz is not None:
        keys = tsigkeys.load(cfg.rpz.tsig_keys_file) if cfg.rpz.tsig_keys_file is not None else ()
        signed = f"signed with one of {len(keys)} TSIG keys" if keys else "by address only"
        out.append(
            f"rpz feed: {len(set(compiled.categories) - {'province'}) + 1} zones under {cfg.rpz.zone_suffix}., "
            f"transfers {signed} "
            f"to {len(cfg.rpz.transfer_clients)} networks"
        )
    for address in addresses:
        out += client_school(address, directory, policies, default_school)[1]
    return out


def parse_client(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A client address as given to `--client` (an IPv4-mapped IPv6 address as its IPv4); UsageError if it is none."""
    try:
        address = ipaddress.ip_address(text.strip().partition("%")[0])
    except ValueError:
        raise UsageError(f"--client: {text!r} is not an IP address (e.g. 10.1.2.34 or 2001:db8:12::5)") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_school(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    directory: schools.SchoolDirectory[policy.SchoolPolicy],
    policies: policy.Policies,
    default_school: policy.SchoolPolicy | None,
) -> tuple[policy.SchoolPolicy | None, list[str]]:
    """The school whose policy a client at `address` gets (None: it is refused), and lines that say why.

    The school is the server's own lookup; the lines name its network and any less specific
    networks of other schools around it (nested networks: the most specific wins).
    """
    school = directory.lookup(address.packed)
    if school is None:
        if default_school is None:
            return None, [f"client: {address} is in no school's networks: it is answered REFUSED (EDE 18 Prohibited)"]
        return default_school, [f"client: {address} is in no school's networks: default_school {default_school.id}"]
    around = sorted(
        ((network, owner) for network, owner in policies.networks() if address in network),
        key=lambda pair: -pair[0].prefixlen,
    )
    network = next(network for network, owner in around if owner is school)
    lines = [f"client: {address} belongs to school {school.id} (network {network} in {school.file})"]
    lines += [
        f"  also in {other} of school {owner.id}, which is less specific" for other, owner in around if other != network
    ]
    return school, lines


def check_name(name: str) -> str:
    """The name `explain` was given, normalised; UsageError (one line saying what to write) if it is no name."""
    try:
        return policy.normalize_name(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    """One list entry that applies to the explained name, and where it is written (when traced)."""

    name: str | None  # None: withheld (an entry of a category that is never shown)
    match: str  # "exact" | "subtree"
    kind: str  # "block" | "allow"
    categories: tuple[str, ...]
    found_in: tuple[str, ...]  # "file:line (kind)" of each line that lists it

    def lines(self) -> list[str]:
        out = [f"listed: {self.name or '(withheld)'} ({self.kind}, {self.match}) in {', '.join(self.categories)}"]
        return out + [f"  from {where}" for where in self.found_in]


@dataclasses.dataclass(frozen=True, slots=True)
class Explained:
    """`schooldns explain`: the policy's explanation, the name as given, and the list entries that apply."""

    explanation: policy.Explanation
    given: str  # the name as typed, before normalisation
    listed: tuple[Listed, ...]

    def lines(self) -> list[str]:
        out = self.explanation.lines()
        if self.explanation.name != self.given.lower().rstrip("."):
            out.insert(2, f"input: {self.given}")
        for entry in self.listed:
            out.extend(entry.lines())
        return out


def explain(
    snapshot: pipeline.Snapshot, school_id: str, name: str, now_epoch_seconds: float, blocklists_dir: Path | None = None
) -> list[str]:
    """`schooldns explain`: the decision for one school and name, with every reason, as printed.

    With `blocklists_dir`, each matching list entry is traced to its file and line.
    """
    return explanation(snapshot, school_id, name, now_epoch_seconds, blocklists_dir).lines()


def explanation(
    snapshot: pipeline.Snapshot,
    school_id: str,
    name: str,
    now_epoch_seconds: float,
    blocklists_dir: Path | None = None,
    withheld: frozenset[str] = frozenset(),
) -> Explained:
    """The decision for one school and name with every reason (see `explain`).

    An entry listed in a `withheld` category is neither named nor traced to a file: the admin API
    shows no line of the csam list (lists.WITHHELD_CATEGORIES).
    """
    school = snapshot.policies.school(school_id)
    if school is None:
        known = ", ".join(s.id for s in snapshot.policies.schools) or "none"
        raise UsageError(f"no school '{school_id}' in the policies (known: {known})")
    normalized = check_name(name)
    mask = snapshot.index.lookup(normalized)
    sources = lists.load_sources(blocklists_dir) if blocklists_dir is not None else None
    listed = []
    for match in snapshot.index.explain(normalized):
        categories = tuple(c for i, c in enumerate(snapshot.categories) if match.bits >> i & 1)
        hidden = not withheld.isdisjoint(categories)
        found_in = (
            ()
            if sources is None or hidden
            else tuple(where for category in categories for where in lists.find_entry(sources, category, match.name))
        )
        listed.append(Listed(None if hidden else match.name, match.match, match.kind, categories, found_in))
    return Explained(policy.explain(school, normalized, mask, now_epoch_seconds), name, tuple(listed))


def parse_time(text: str, timezone: str, what: str = "--at") -> datetime.datetime:
    """A time to explain at (`what` names it in the error): ISO 8601 with an offset, or 'YYYY-MM-DD HH:MM'
    in the policy's time zone."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{what}: cannot read {text!r}; use 'YYYY-MM-DD HH:MM'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return moment
