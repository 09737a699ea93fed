"""lists: the sources.yaml contract, its strict validation, and compiling the category index."""

import shutil
import textwrap
from pathlib import Path

import pytest

from resolver.errors import ResolverError
from resolver.filtering import domains, listformats, lists
from resolver.yamlfile import ConfigError, Problem
from tests.support.harness import write_lists_over_capacity

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SHIPPED = ROOT / "blocklists"

# The example from docs/lists.md: malware from an adblock list plus a local domains list (subtree),
# phishing from a hosts list taken as exact names, with a list-level allow list.
CONTRACT = """\
categories:
  malware:
    description: Malware distribution and command and control.
    sources:
      - {file: malware/urlhaus-filter-online.txt, format: adblock}
      - {file: malware/extra.txt, format: domains, match: subtree}
  phishing:
    description: Credential phishing.
    sources:
      - {file: phishing/hosts.txt, format: hosts, match: exact}
    allow:
      - {file: phishing/allow.txt, format: domains, match: exact}
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


@pytest.fixture
def contract_dir(tmp_path):
    write(
        tmp_path,
        {
            "sources.yaml": CONTRACT,
            "malware/extra.txt": """\
            # local additions
            bad.school-test.example
            Tải-Phần-Mềm.vn
            """,
            "phishing/hosts.txt": """\
            127.0.0.1 localhost
            0.0.0.0 login-bank.example
            0.0.0.0 wallet.example shared.example
            """,
            "phishing/allow.txt": """\
            shared.example
            """,
        },
    )
    shutil.copy(DATA / "urlhaus-filter-online.txt", tmp_path / "malware")
    return tmp_path


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        lists.load_sources(directory)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]


def sources_yaml(directory: Path, text: str, files: tuple[str, ...] = ("a.txt",)) -> Path:
    write(directory, {"sources.yaml": text, **{name: "a.example\n" for name in files}})
    return directory


# --- the contract ----------------------------------------------------------------------------


def test_contract_example_loads(contract_dir):
    sources = lists.load_sources(contract_dir)
    assert sources.directory == contract_dir
    assert sources.categories == ("malware", "phishing")
    assert [(s.category, s.kind, s.file, s.format, s.match) for s in sources.sources] == [
        ("malware", "block", "malware/urlhaus-filter-online.txt", "adblock", None),
        ("malware", "block", "malware/extra.txt", "domains", "subtree"),
        ("phishing", "block", "phishing/hosts.txt", "hosts", "exact"),
        ("phishing", "allow", "phishing/allow.txt", "domains", "exact"),
    ]
    assert sources.files() == [contract_dir / s.file for s in sources.sources]


def test_contract_example_compiles_and_looks_up(contract_dir):
    compiled = lists.compile_lists(contract_dir)
    assert compiled.categories == ("malware", "phishing")
    index = domains.DomainIndex.from_bytes(compiled.image)
    malware, phishing = 1, 2
    # adblock: a bare host is exact, ||host^ is subtree (real lines of urlhaus-filter-online.txt)
    assert index.lookup("xworm0106.duckdns.org") == malware
    assert index.lookup("sub.xworm0106.duckdns.org") == 0
    assert index.lookup("duckdns.org") == 0
    assert index.lookup("wegrowcoaching.com") == malware
    assert index.lookup("www.wegrowcoaching.com") == malware
    assert index.lookup("1.1.104.12") == 0  # IP addresses are not names
    # domains with match: subtree, including an IDN written in Unicode
    assert index.lookup("bad.school-test.example") == malware
    assert index.lookup("x.bad.school-test.example") == malware
    assert index.lookup("xn--ti-phn-mm-l86dvb9u.vn") == malware  # idna.encode("tải-phần-mềm.vn", uts46=True)
    # hosts with match: exact
    assert index.lookup("login-bank.example") == phishing
    assert index.lookup("www.login-bank.example") == 0
    assert index.lookup("wallet.example") == phishing
    assert index.lookup("localhost") == 0
    # the allow list is a list-level exception for its own category
    assert index.lookup("shared.example") == 0
    assert compiled.entry_counts == {"malware": 602 + 2, "phishing": 3}


def test_reports_per_source(contract_dir):
    compiled = lists.compile_lists(contract_dir)
    summary = [(r.category, r.kind, r.file, r.format, r.entries, r.skipped, r.invalid) for r in compiled.reports]
    assert summary == [
        ("malware", "block", "malware/urlhaus-filter-online.txt", "adblock", 602, 5658, 0),
        ("malware", "block", "malware/extra.txt", "domains", 2, 1, 0),
        ("phishing", "block", "phishing/hosts.txt", "hosts", 3, 1, 0),
        ("phishing", "allow", "phishing/allow.txt", "domains", 1, 0, 0),
    ]
    urlhaus = compiled.reports[0]
    assert urlhaus.reasons == {"comment": 6, "ip address": 2307, "path rule": 3345}
    assert urlhaus.examples["ip address"] == (7, "1.1.104.12")
    assert compiled.reports[2].reasons == {"local name": 1}


def test_progress_is_called_once_per_source(contract_dir):
    calls = []
    lists.compile_lists(contract_dir, progress=calls.append)
    assert calls == [
        "lists: malware/block: malware/urlhaus-filter-online.txt: 602 entries, 5658 skipped, 0 invalid",
        "lists: malware/block: malware/extra.txt: 2 entries, 1 skipped, 0 invalid",
        "lists: phishing/block: phishing/hosts.txt: 3 entries, 1 skipped, 0 invalid",
        "lists: phishing/allow: phishing/allow.txt: 1 entries, 0 skipped, 0 invalid",
    ]


def test_allow_of_one_category_does_not_unblock_another(tmp_path):
    write(
        tmp_path,
        {
            "sources.yaml": """\
            categories:
              games:
                sources: [{file: games.txt, format: domains}]
              social:
                sources: [{file: social.txt, format: domains}]
                allow: [{file: social-allow.txt, format: domains}]
            """,
            "games.txt": "portal.example\n",
            "social.txt": "portal.example\n",
            "social-allow.txt": "chat.portal.example\n",
        },
    )
    index = domains.DomainIndex.from_bytes(lists.compile_lists(tmp_path).image)
    assert index.lookup("portal.example") == 0b11
    assert index.lookup("chat.portal.example") == 0b01  # still games
    assert index.lookup("x.chat.portal.example") == 0b01  # domains allow lists default to subtree


def test_allow_source_turns_every_entry_into_an_exception(tmp_path):
    # In an allow source even a block rule of the format is an exception.
    write(
        tmp_path,
        {
            "sources.yaml": """\
            categories:
              ads:
                sources: [{file: block.txt, format: adblock}]
                allow: [{file: allow.txt, format: adblock}]
            """,
            "block.txt": "||ads.example^\n@@||ok.ads.example^\n",
            "allow.txt": "||fine.ads.example^\n",
        },
    )
    compiled = lists.compile_lists(tmp_path)
    index = domains.DomainIndex.from_bytes(compiled.image)
    assert index.lookup("x.ads.example") == 1
    assert index.lookup("ok.ads.example") == 0  # @@ inside a block source
    assert index.lookup("fine.ads.example") == 0
    assert index.explain("x.fine.ads.example") == [
        domains.Match("fine.ads.example", 1, "subtree", "allow"),
        domains.Match("ads.example", 1, "subtree", "block"),
    ]
    assert index.explain("x.ok.ads.example") == [
        domains.Match("ok.ads.example", 1, "subtree", "allow"),
        domains.Match("ads.example", 1, "subtree", "block"),
    ]
    assert index.entry_count == 3


def test_rpz_source(tmp_path):
    write(
        tmp_path,
        {
            "sources.yaml": "categories:\n  province:\n    sources: [{file: province.rpz, format: rpz}]\n",
            "province.rpz": """\
            $ORIGIN rpz.province.example.
            @ SOA ns admin 1 3600 600 86400 60
            exact.example CNAME .
            *.tree.example CNAME .
            ok.tree.example CNAME rpz-passthru.
            """,
        },
    )
    index = domains.DomainIndex.from_bytes(lists.compile_lists(tmp_path).image)
    assert index.lookup("exact.example") == 1
    assert index.lookup("www.exact.example") == 0
    assert index.lookup("a.tree.example") == 1
    assert index.lookup("a.b.tree.example") == 1
    assert index.lookup("tree.example") == 0  # as in RPZ: `*.d` covers the names under d, not d
    assert index.lookup("ok.tree.example") == 0
    assert index.lookup("x.ok.tree.example") == 1  # the exception is for the name only


def test_category_without_sources_is_valid_and_empty(tmp_path):
    sources_yaml(
        tmp_path,
        """\
        categories:
          csam:
            description: Entries only from the province's signed list.
            sources: []
          empty:
          bare: {}
        """,
    )
    sources = lists.load_sources(tmp_path)
    assert sources.categories == ("csam", "empty", "bare")
    assert sources.sources == ()
    compiled = lists.compile_lists(tmp_path)
    assert compiled.entry_counts == {"csam": 0, "empty": 0, "bare": 0}
    assert compiled.reports == ()
    assert domains.DomainIndex.from_bytes(compiled.image).entry_count == 0


def test_sixty_four_categories_are_allowed_and_the_last_gets_bit_63(tmp_path):
    names = [f"c{i}" for i in range(63)] + ["last"]
    text = "categories:\n" + "".join(f"  {n}: {{}}\n" for n in names[:-1])
    text += "  last:\n    sources: [{file: a.txt, format: domains}]\n"
    sources_yaml(tmp_path, text)
    compiled = lists.compile_lists(tmp_path)
    assert compiled.categories == tuple(names)
    index = domains.DomainIndex.from_bytes(compiled.image)
    assert index.lookup("a.example") == 1 << 63


# --- errors: file:line: key.path: message ----------------------------------------------------


def test_every_error_kind_is_reported_with_file_line_and_key(tmp_path):
    sources_yaml(
        tmp_path,
        """\
        version: 1
        colour: blue
        categories:
          malware:
            description: Malware.
            source: []
            sources:
              - {file: a.txt, format: csv}
              - {file: a.txt, format: adblock, match: subtree}
              - {file: a.txt, format: domains, match: prefix}
              - {file: missing.txt, format: domains}
              - {file: /etc/hosts, format: hosts}
              - {file: ../escape.txt, format: hosts}
              - {file: a.txt, fromat: domains}
              - a.txt
            allow:
              - {file: a.txt, format: rpz, match: exact}
          deny: {}
          safe_search:
          Adult: {}
          phishing: []
          csam:
            sources: nope
        """,
    )
    f = tmp_path / "sources.yaml"
    assert problems_of(tmp_path) == [
        f"{f}:8: categories.malware.sources[0].format: unknown format 'csv' (known: domains, hosts, adblock, rpz)",
        f"{f}:9: categories.malware.sources[1].match: format 'adblock' sets exact or subtree per rule; remove `match`",
        f"{f}:10: categories.malware.sources[2].match: unknown match 'prefix' (known: exact, subtree)",
        f"{f}:11: categories.malware.sources[3].file: no such list file: {tmp_path / 'missing.txt'}",
        f"{f}:12: categories.malware.sources[4].file: list files are paths inside the blocklists directory",
        f"{f}:13: categories.malware.sources[5].file: list files are paths inside the blocklists directory",
        f"{f}:14: categories.malware.sources[6]: missing required key 'format'",
        f"{f}:14: categories.malware.sources[6].fromat: unknown key 'fromat' (known keys: file, format, match)",
        f"{f}:15: categories.malware.sources[7]: expected a mapping like {{file: ..., format: ...}}",
        f"{f}:17: categories.malware.allow[0].match: format 'rpz' sets exact or subtree per rule; remove `match`",
        f"{f}:6: categories.malware.source: unknown key 'source' (known keys: allow, description, sources)",
        f"{f}:18: categories.deny: 'deny' is reserved for policy blocks; choose another name",
        f"{f}:19: categories.safe_search: 'safe_search' is reserved for policy blocks; choose another name",
        f"{f}:20: categories.Adult: category names are 1-32 of a-z, 0-9 and _, starting with a letter",
        f"{f}:21: categories.phishing: expected a mapping, got a list",
        f"{f}:23: categories.csam.sources: expected a list, got a string",
        f"{f}:2: colour: unknown key 'colour' (known keys: categories, version)",
    ]


def test_problem_fields(tmp_path):
    sources_yaml(tmp_path, "categories:\n  malware:\n    sources:\n      - {file: a.txt, format: csv}\n")
    with pytest.raises(ConfigError) as caught:
        lists.load_sources(tmp_path)
    assert caught.value.problems == [
        Problem(
            str(tmp_path / "sources.yaml"),
            4,
            "categories.malware.sources[0].format",
            "unknown format 'csv' (known: domains, hosts, adblock, rpz)",
        )
    ]


@pytest.mark.parametrize(
    "text, line, key, message",
    [
        (
            "categories:\n  a:\n    sources:\n      - {file: a.txt, format: adblock, match: exact}\n",
            4,
            "categories.a.sources[0].match",
            "format 'adblock' sets exact or subtree per rule; remove `match`",
        ),
        (
            "categories:\n  a:\n    sources:\n      - {file: a.txt, format: rpz, match: subtree}\n",
            4,
            "categories.a.sources[0].match",
            "format 'rpz' sets exact or subtree per rule; remove `match`",
        ),
        (
            "categories:\n  a:\n    sources:\n      - {file: a.txt}\n",
            4,
            "categories.a.sources[0]",
            "missing required key 'format'",
        ),
        (
            "categories:\n  a:\n    sources:\n      - {format: domains}\n",
            4,
            "categories.a.sources[0]",
            "missing required key 'file'",
        ),
        (
            "categories:\n  a:\n    sources:\n      - {file: 3, format: domains}\n",
            4,
            "categories.a.sources[0].file",
            "expected a string, got an integer",
        ),
        (
            "categories:\n  a:\n    sources:\n      - {file: sub/../a.txt, format: domains}\n",
            4,
            "categories.a.sources[0].file",
            "list files are paths inside the blocklists directory",
        ),
        ("categories:\n  a:\n    description: [x]\n", 3, "categories.a.description", "expected a string, got a list"),
        ("categories:\n  a:\n    allow: {file: a.txt}\n", 3, "categories.a.allow", "expected a list, got a mapping"),
        (
            "categories:\n  deny:\n    sources: []\n",
            2,
            "categories.deny",
            "'deny' is reserved for policy blocks; choose another name",
        ),
        (
            "categories:\n  1games: {}\n",
            2,
            "categories.1games",
            "category names are 1-32 of a-z, 0-9 and _, starting with a letter",
        ),
        (
            "categories:\n  " + "x" * 33 + ": {}\n",
            2,
            "categories." + "x" * 33,
            "category names are 1-32 of a-z, 0-9 and _, starting with a letter",
        ),
        ("categories:\n  a: {}\n  a: {}\n", 3, "categories.a", "duplicate key"),
        ("categories: {}\n", 1, "categories", "no categories declared"),
        ("version: 1\n", 1, "categories", "no categories declared"),
        (
            "version: 2\ncategories:\n  a: {}\n",
            1,
            "version",
            "version 2 is not supported (this schooldns reads version 1)",
        ),
        ("", 1, "categories", "no categories declared"),
        ("- a\n- b\n", 1, "", "expected a mapping, got a list"),
        ("categories: [a, b]\n", 1, "categories", "expected a mapping, got a list"),
    ],
)
def test_single_problem(tmp_path, text, line, key, message):
    sources_yaml(tmp_path, text)
    where = f"{key}: " if key else ""
    assert problems_of(tmp_path) == [f"{tmp_path / 'sources.yaml'}:{line}: {where}{message}"]


def test_more_than_64_categories(tmp_path):
    sources_yaml(tmp_path, "# header\ncategories:\n" + "".join(f"  c{i}: {{}}\n" for i in range(65)))
    assert problems_of(tmp_path) == [
        f"{tmp_path / 'sources.yaml'}:2: categories: 65 categories; at most 64 are supported"
    ]


def test_invalid_yaml(tmp_path):
    sources_yaml(tmp_path, "categories:\n  a: {file: [\n")
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{tmp_path / 'sources.yaml'}:")
    assert "invalid YAML" in problem


def test_missing_sources_yaml(tmp_path):
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{tmp_path / 'sources.yaml'}:1: cannot read file:")


def test_compile_raises_the_same_config_error(tmp_path):
    sources_yaml(tmp_path, "categories:\n  a:\n    sources: [{file: gone.txt, format: domains}]\n")
    with pytest.raises(ConfigError, match=r"sources.yaml:3: categories.a.sources\[0\].file: no such list file"):
        lists.compile_lists(tmp_path)


# --- the shipped blocklists/ -----------------------------------------------------------------

SHIPPED_CATEGORIES = (
    "adult",
    "gambling",
    "violence",
    "drugs",
    "malware",
    "phishing",
    "csam",
    "games",
    "social",
    "bypass",
)


def test_shipped_blocklists_compile_cleanly():
    calls = []
    compiled = lists.compile_lists(SHIPPED, progress=calls.append)
    assert compiled.categories == SHIPPED_CATEGORIES
    sources = lists.load_sources(SHIPPED)
    assert len(calls) == len(compiled.reports) == len(sources.sources)
    for report in compiled.reports:
        assert report.invalid == 0, (report.file, report.examples)
        assert report.entries > 0, report.file
    assert compiled.entry_counts["csam"] == 0  # empty on purpose: only the province's signed list
    assert not [s for s in sources.sources if s.category == "csam"]
    for category in SHIPPED_CATEGORIES:
        if category != "csam":
            assert compiled.entry_counts[category] > 0, category

    index = domains.DomainIndex.from_bytes(compiled.image)
    bit = {name: 1 << i for i, name in enumerate(compiled.categories)}
    assert index.lookup("www.pornhub.com") == bit["adult"]
    assert index.lookup("bet365.com") == bit["gambling"]
    assert index.lookup("m.tiktok.com") == bit["social"]
    assert index.lookup("dns.google") == bit["bypass"]
    assert index.lookup("malware.schooldns.test") == bit["malware"]
    assert index.lookup("phishing.schooldns.test") == bit["phishing"]
    assert index.lookup("yearnson.finance") == bit["phishing"]
    assert index.lookup("www.yearnson.finance") == 0  # the hosts list is declared match: exact
    assert index.lookup("wikipedia.org") == 0
    assert index.lookup("moet.gov.vn") == 0


def test_shipped_phishing_allow_list_wins_over_its_block_lists():
    allow = {
        line.strip()
        for line in (SHIPPED / "phishing" / "eth-phishing-detect-allow.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    index = domains.DomainIndex.from_bytes(lists.compile_lists(SHIPPED).image)
    phishing = 1 << SHIPPED_CATEGORIES.index("phishing")
    assert len(allow) > 1000
    assert all(not index.lookup(name) & phishing for name in allow)


# --- bulk compile == entry by entry ----------------------------------------------------------


def entries_line_by_line(directory: Path) -> list[tuple[str, int, str, str]]:
    """Every source's entries from the line-by-line parsers, as build_index takes them."""
    sources = lists.load_sources(directory)
    entries = []
    for source in sources.sources:
        bit = sources.categories.index(source.category)
        with open(source.path, encoding="utf-8", errors="replace") as lines:
            for name, match, kind in listformats.parse_list(source.format, lines, listformats.Tally(), source.match):
                entries.append((name, bit, match, "allow" if source.kind == "allow" else kind))
    return entries


@pytest.mark.parametrize("directory", ["contract", "shipped"])
def test_bulk_compile_holds_exactly_the_entries_of_the_line_by_line_parsers(directory, contract_dir):
    root = contract_dir if directory == "contract" else SHIPPED
    entries = entries_line_by_line(root)
    compiled = domains.DomainIndex.from_bytes(lists.compile_lists(root).image)
    reference = domains.DomainIndex.from_bytes(domains.build_index(entries))
    assert (compiled.entry_count, compiled.node_count) == (reference.entry_count, reference.node_count)
    for name in {name for name, *_ in entries}:  # the index holds no names to list: explain each
        assert compiled.explain(name) == reference.explain(name), name
    for name, *_ in entries[::7]:
        for query in (name, "www." + name, name.partition(".")[2]):
            assert compiled.lookup(query) == reference.lookup(query), query


def test_a_messy_domains_source_reports_what_the_line_parser_counts(tmp_path):
    text = "# header\n\nok.example\r\nBad..example\n*.tree.example\nxn--abc.example\n192.0.2.1\nbücher.example\n"
    write(
        tmp_path,
        {"sources.yaml": "categories:\n  misc:\n    sources: [{file: misc.txt, format: domains}]\n", "misc.txt": text},
    )
    tally = listformats.Tally()
    with open(tmp_path / "misc.txt", encoding="utf-8") as lines:
        entries = list(listformats.parse_domains(lines, tally))
    (report,) = lists.compile_lists(tmp_path).reports
    assert (report.entries, report.skipped, report.invalid) == (len(entries), tally.skipped, tally.invalid) == (3, 2, 2)
    assert (report.reasons, report.examples) == (tally.reasons, tally.examples)


def test_lists_over_the_index_capacity_fail_the_compile_in_one_line(tmp_path):
    with pytest.raises(ResolverError) as caught:
        lists.compile_lists(write_lists_over_capacity(tmp_path, [f"c{i}" for i in range(60)]))
    assert str(caught.value) == (
        f"the lists do not compile: over {domains._MAX_MASKSETS} distinct combinations of categories "
        "(block and allow) share names; one index holds at most that many"
    )
