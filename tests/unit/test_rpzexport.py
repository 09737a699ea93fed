"""rpzexport: an exported zone decides every name as the index does, under the RPZ rule and under unbound's."""

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver.filtering import domains, lists, rpzexport

CATEGORIES = ("adult", "malware")


def write_lists(directory, entries):
    """blocklists with `entries` (name, category, kind, match); below entries go to RPZ files."""
    files: dict[tuple[str, str, str], list[str]] = {}
    for name, category, kind, match in entries:
        files.setdefault((category, kind, match), []).append(f"*.{name} CNAME ." if match == "below" else name)
    lines = ["categories:"]
    for category in CATEGORIES:
        lines.append(f"  {category}:")
        for kind, key in (("block", "sources"), ("allow", "allow")):
            declared = []
            for match in ("exact", "subtree", "below"):
                names = files.get((category, kind, match))
                if names is None:
                    continue
                file = f"{category}-{kind}-{match}.txt"
                (directory / file).write_text("\n".join(names) + "\n")
                kind_of_file = "format: rpz" if match == "below" else f"format: domains, match: {match}"
                declared.append(f"{{file: {file}, {kind_of_file}}}")
            lines.append(f"    {key}: [{', '.join(declared)}]")
    (directory / lists.SOURCES_FILE).write_text("\n".join(lines) + "\n")
    compiled = lists.compile_lists(directory)
    return domains.DomainIndex.from_bytes(compiled.image), lists.load_sources(directory)


def zone_of(index, sources, categories):
    mask = sum(1 << CATEGORIES.index(category) for category in categories)
    chosen = [source for source in sources.sources if source.category in categories]
    return list(rpzexport.zone_records(index, chosen, mask)), mask


def rpz_rule(records, name):
    """RFC-draft RPZ (BIND, PowerDNS Recursor): the exact trigger, else the longest `*.` above the name."""
    if name in records:
        return records[name]
    labels = name.split(".")
    for depth in range(1, len(labels)):
        wildcard = "*." + ".".join(labels[depth:])
        if wildcard in records:
            return records[wildcard]
    return False


def canonical(name):
    return tuple(reversed(name.encode().split(b".")))


def unbound_rule(records, name):
    """unbound's rpz_find_zone: the exact trigger; else the owner before the name in canonical order,
    the labels it shares with the name, and only the `*.` record at that closest encloser."""
    if name in records:
        return records[name]
    before = [owner for owner in records if canonical(owner) <= canonical(name)]
    if not before:
        return False
    previous = max(before, key=canonical)
    shared = []
    for mine, theirs in zip(canonical(name), canonical(previous), strict=False):
        if mine != theirs:
            break
        shared.append(mine)
    if not shared:
        return False
    wildcard = "*." + b".".join(reversed(shared)).decode()
    return records.get(wildcard, False)


def queries_around(names):
    out = set()
    for name in names:
        parent = name.partition(".")[2]
        out.update({name, f"x.{name}", f"x.y.{name}", f"z{name}", parent, f"q.{parent}"})
    return sorted(out - {""})


def check(tmp_path, entries, zone_categories):
    index, sources = write_lists(tmp_path, entries)
    records, mask = zone_of(index, sources, zone_categories)
    owners = [owner for owner, _ in records]
    assert len(owners) == len(set(owners)), "an owner written twice"
    table = dict(records)
    for name in queries_around({name for name, *_ in entries}):
        expected = bool(index.lookup(name) & mask)
        assert rpz_rule(table, name) == expected, (name, records)
        assert unbound_rule(table, name) == expected, (name, records)
    return records


def test_a_block_list_of_subtrees_is_a_name_and_a_wildcard_each(tmp_path):
    records = check(
        tmp_path,
        [
            ("ads.example", "adult", "block", "subtree"),
            ("www.ads.example", "adult", "block", "subtree"),  # under a blocked subtree: nothing new
            ("one.example", "adult", "block", "exact"),
            ("wild.example", "adult", "block", "below"),
        ],
        ["adult"],
    )
    assert records == [("one.example", True), ("ads.example", True), ("*.ads.example", True), ("*.wild.example", True)]


def test_an_exception_inside_a_blocked_subtree_carries_the_block_to_the_names_between(tmp_path):
    records = check(
        tmp_path,
        [
            ("example.com", "adult", "block", "subtree"),
            ("ok.a.b.example.com", "adult", "allow", "exact"),
        ],
        ["adult"],
    )
    assert sorted(records) == [
        ("*.a.b.example.com", True),
        ("*.b.example.com", True),
        ("*.example.com", True),
        ("*.ok.a.b.example.com", True),
        ("example.com", True),
        ("ok.a.b.example.com", False),
    ]


def test_allow_entries_that_lift_nothing_are_not_written(tmp_path):
    records = check(tmp_path, [("fine.example", "adult", "allow", "subtree")], ["adult"])
    assert records == []


def test_a_zone_of_several_categories_writes_a_name_once(tmp_path):
    records = check(
        tmp_path,
        [
            ("both.example", "adult", "block", "subtree"),
            ("both.example", "malware", "block", "exact"),
            ("lifted.example", "adult", "block", "exact"),
            ("lifted.example", "adult", "allow", "exact"),
            ("lifted.example", "malware", "block", "exact"),  # an allow lifts its own category only
        ],
        ["adult", "malware"],
    )
    assert sorted(records) == [("*.both.example", True), ("both.example", True), ("lifted.example", True)]


def test_a_name_the_index_does_not_hold_means_the_lists_changed(tmp_path):
    index, sources = write_lists(tmp_path, [("a.example", "adult", "block", "exact")])
    (tmp_path / "adult-block-exact.txt").write_text("a.example\nnew.example\n")
    with pytest.raises(rpzexport.StaleLists, match=r"adult-block-exact.txt: 'new.example' is not in the compiled"):
        list(rpzexport.zone_records(index, sources.sources, 1))


LABELS = st.sampled_from(["a", "b", "www", "com"])
ENTRIES = st.lists(
    st.tuples(
        st.lists(LABELS, min_size=2, max_size=5).map(".".join),
        st.sampled_from(CATEGORIES),
        st.sampled_from(["block", "block", "allow"]),
        st.sampled_from(["exact", "subtree", "below"]),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, zone=st.sampled_from([["adult"], ["malware"], ["adult", "malware"]]))
def test_every_zone_decides_as_the_index(tmp_path_factory, entries, zone):
    check(tmp_path_factory.mktemp("lists"), entries, zone)


def test_the_lists_format_in_the_test_is_what_lists_reads(tmp_path):
    write_lists(tmp_path, [("a.example", "adult", "block", "below")])
    assert (tmp_path / lists.SOURCES_FILE).read_text() == textwrap.dedent(
        """\
        categories:
          adult:
            sources: [{file: adult-block-below.txt, format: rpz}]
            allow: []
          malware:
            sources: []
            allow: []
        """
    )
