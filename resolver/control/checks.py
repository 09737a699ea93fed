"""`schooldns check` and `schooldns explain`: everything a reload would do, and why a name is answered as it is."""

from __future__ import annotations

from pathlib import Path

from resolver.control import config, snapshots
from resolver.dataplane import pipeline
from resolver.errors import UsageError
from resolver.filtering import lists, policy, policyfile, schools


def check(cfg: config.Config) -> list[str]:
    """`schooldns check`: everything a reload would do; raises ConfigError; returns a summary."""
    sources = lists.load_sources(cfg.blocklists_dir)
    policies = policyfile.load_policies(cfg.policies_dir, sources.categories)
    compiled = lists.compile_lists(cfg.blocklists_dir)
    snapshots.find_default_school(cfg, policies)
    schools.SchoolDirectory.build(policies.networks())
    out = [
        f"{len(policies.schools)} schools, {len(compiled.categories)} categories, "
        f"{sum(compiled.entry_counts.values())} list entries"
    ]
    for report in compiled.reports:
        out.append(f"  {report.file}: {report.entries} entries, {report.skipped} skipped, {report.invalid} invalid")
    return out


def check_name(name: str) -> str:
    """The name `explain` was given, normalised; UsageError (one line saying what to write) if it is no name."""
    try:
        return policy.normalize_name(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def explain(
    snapshot: pipeline.Snapshot, school_id: str, name: str, now_epoch_seconds: float, blocklists_dir: Path | None = None
) -> list[str]:
    """`schooldns explain`: the decision for one school and name, with every reason.

    With `blocklists_dir`, each matching list entry is traced to its file and line.
    """
    school = snapshot.policies.school(school_id)
    if school is None:
        known = ", ".join(s.id for s in snapshot.policies.schools) or "none"
        raise UsageError(f"no school '{school_id}' in the policies (known: {known})")
    normalized = check_name(name)
    mask = snapshot.index.lookup(normalized)
    out = policy.explain(school, normalized, mask, now_epoch_seconds).lines()
    if normalized != name.lower().rstrip("."):
        out.insert(2, f"input: {name}")
    sources = lists.load_sources(blocklists_dir) if blocklists_dir is not None else None
    for match in snapshot.index.explain(normalized):
        categories = [c for i, c in enumerate(snapshot.categories) if match.bits >> i & 1]
        out.append(f"listed: {match.name} ({match.kind}, {match.match}) in {', '.join(categories)}")
        if sources is not None:
            out.extend(
                f"  from {where}"
                for category in categories
                for where in lists.find_entry(sources, category, match.name)
            )
    return out
