"""The `schooldns` command as a real process: version, log level, quiet tools, one line per user mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import resolver
from tests.support.harness import write_site

ROOT = Path(__file__).resolve().parents[2]
SCHOOLDNS = [sys.executable, "-m", "resolver"]


def schooldns(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCHOOLDNS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a user mistake prints on stderr (and nothing on stdout)."""
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config over a small site; the upstream is never asked (check and explain do not forward)."""
    return write_site(tmp_path, ["127.0.0.1:53"])


def test_version():
    result = schooldns("--version")
    compiled = resolver.compiled_modules()  # a compiled build names its modules (tests/unit/test_compiled.py)
    built = f" (compiled: {', '.join(name.rsplit('.', 1)[1] for name in compiled)})" if compiled else ""
    assert (result.returncode, result.stdout, result.stderr) == (0, f"schooldns 0.1.0{built}\n", "")


def test_check_and_explain_print_their_answer_and_no_log(site):
    checked = schooldns("check", "--config", str(site))
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout.splitlines()[0] == "2 schools, 4 categories, 4 list entries"
    assert checked.stdout.endswith(f"{site}: OK\n")

    # The first explain compiles the lists into state_dir: that is logged at INFO, so not shown.
    explained = schooldns("explain", "--config", str(site), "school-a", "games.example.com", "--at", "2026-11-25 10:00")
    assert (explained.returncode, explained.stderr) == (0, "")
    assert "decision: block (nxdomain, category games, authority school)" in explained.stdout.splitlines()
    assert "time: 2026-11-25 10:00 wed (Asia/Ho_Chi_Minh)" in explained.stdout.splitlines()


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_is_taken_before_or_after_the_command(site, where):
    # explain reads (or first compiles) the lists in state_dir, which is logged at INFO.
    command = ["explain", "--config", str(site), "school-a", "games.example.com"]
    for level, shown in [("warning", False), ("info", True), ("warning", False)]:
        option = ["--log-level", level]
        result = schooldns(*(option + command if where == "before" else command + option))
        assert result.returncode == 0, result.stderr
        assert (" INFO resolver." in result.stderr) is shown, result.stderr


def test_explain_given_a_url_says_what_to_write(site):
    result = schooldns("explain", "--config", str(site), "school-a", "http://x.com/a")
    assert result.returncode == 2
    assert one_line(result) == (
        "schooldns explain: 'http://x.com/a' is a URL; write only the domain name, e.g. 'example.com'"
    )


def test_explain_given_an_unknown_school_names_the_known_ones(site):
    result = schooldns("explain", "--config", str(site), "x", "example.com")
    assert result.returncode == 2
    assert one_line(result) == "schooldns explain: no school 'x' in the policies (known: school-a, school-b)"


def test_explain_given_an_unreadable_time_is_a_usage_error(site):
    result = schooldns("explain", "--config", str(site), "school-a", "example.com", "--at", "tomorrow")
    assert result.returncode == 2
    assert one_line(result) == "schooldns explain: --at: cannot read 'tomorrow'; use 'YYYY-MM-DD HH:MM'"


# A district office's /16 around a school's /24 (nested networks: the most specific wins).
NESTED = {
    "policies/district.yaml": "id: district\nlevel: upper_secondary\nnetworks: [10.1.0.0/16]\n",
    "policies/school-c.yaml": "id: school-c\nlevel: primary\nnetworks: [10.1.2.0/24]\n",
}


def test_explain_and_check_given_a_client_address_name_its_school(tmp_path):
    site = write_site(tmp_path, ["127.0.0.1:53"], files=NESTED)
    policies = tmp_path / "policies"
    explained = schooldns("explain", "--config", str(site), "--client", "10.1.2.34", "games.example.com")
    assert (explained.returncode, explained.stderr) == (0, "")
    lines = explained.stdout.splitlines()
    assert lines[:3] == [
        f"client: 10.1.2.34 belongs to school school-c (network 10.1.2.0/24 in {policies / 'school-c.yaml'})",
        "  also in 10.1.0.0/16 of school district, which is less specific",
        "school: school-c",
    ]
    assert "decision: block (nxdomain, category games, authority school)" in lines

    # The district office's own clients: upper secondary does not block games.
    explained = schooldns("explain", "--client", "::ffff:10.1.9.9", "games.example.com", "--config", str(site))
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert lines[:2] == [
        f"client: 10.1.9.9 belongs to school district (network 10.1.0.0/16 in {policies / 'district.yaml'})",
        "school: district",
    ]
    assert "decision: allow" in lines

    checked = schooldns("check", "--config", str(site), "--client", "10.1.2.34", "--client", "192.0.2.1")
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout.splitlines()[-4:] == [
        f"client: 10.1.2.34 belongs to school school-c (network 10.1.2.0/24 in {policies / 'school-c.yaml'})",
        "  also in 10.1.0.0/16 of school district, which is less specific",
        "client: 192.0.2.1 is in no school's networks: it is answered REFUSED (EDE 18 Prohibited)",
        f"{site}: OK",
    ]


def test_explain_says_when_a_name_goes_to_the_schools_own_servers_and_check_names_a_bad_server(tmp_path):
    forwarding = NESTED["policies/school-c.yaml"] + "forward_zones: {truong.local: [10.1.2.3]}\n"
    site = write_site(tmp_path, ["127.0.0.1:53"], files={**NESTED, "policies/school-c.yaml": forwarding})
    explained = schooldns("explain", "--config", str(site), "--client", "10.1.2.34", "dc1.truong.local")
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.splitlines()[-1] == (
        "answered by: the school's own DNS servers 10.1.2.3:53 (this school's forward zone 'truong.local')"
    )
    explained = schooldns("explain", "--config", str(site), "--client", "10.1.9.9", "dc1.truong.local")
    assert "answered by" not in explained.stdout  # the district office's clients: the upstreams
    explained = schooldns("explain", "--config", str(site), "school-a", "1.0.0.127.in-addr.arpa")
    assert explained.stdout.splitlines()[-1].startswith(
        "answered by: schooldns itself (locally served zone '127.in-addr.arpa'"
    )

    (tmp_path / "policies" / "school-c.yaml").write_text(
        forwarding.replace("[10.1.2.3]", "[dc1.truong.local]"), encoding="utf-8"
    )
    checked = schooldns("check", "--config", str(site))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert (
        f"{tmp_path / 'policies' / 'school-c.yaml'}:4: forward_zones.truong.local[0]: 'dc1.truong.local' is not "
        "a server address IP[:port] (e.g. 10.1.2.3 or 10.1.2.3:5353)"
    ) in checked.stderr


def test_explain_for_a_client_of_no_school_says_it_is_refused(site):
    result = schooldns("explain", "--config", str(site), "--client", "192.0.2.1", "games.example.com")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "client: 192.0.2.1 is in no school's networks: it is answered REFUSED (EDE 18 Prohibited)\n"

    site.write_text(site.read_text() + "default_school: school-b\n")
    result = schooldns("explain", "--config", str(site), "--client", "192.0.2.1", "games.example.com")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        "client: 192.0.2.1 is in no school's networks: default_school school-b",
        "school: school-b",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--client", "10.1.2.345", "example.com"],
            "schooldns explain: --client: '10.1.2.345' is not an IP address (e.g. 10.1.2.34 or 2001:db8:12::5)",
        ),
        (
            ["example.com"],
            "schooldns explain: give a school and a name (SCHOOL NAME), or a client address: --client ADDRESS NAME",
        ),
        (
            ["school-a", "example.com", "--client", "10.1.2.34"],
            "schooldns explain: give a school ('school-a') or --client ADDRESS, not both",
        ),
    ],
)
def test_explain_without_exactly_one_of_school_and_client_is_a_usage_error(site, args, message):
    result = schooldns("explain", "--config", str(site), *args)
    assert result.returncode == 2
    assert one_line(result) == message


def test_check_given_no_address_is_a_usage_error(site):
    result = schooldns("check", "--config", str(site), "--client", "school-a")
    assert result.returncode == 2
    assert one_line(result) == (
        "schooldns check: --client: 'school-a' is not an IP address (e.g. 10.1.2.34 or 2001:db8:12::5)"
    )


def test_check_lists_every_problem_of_the_config_by_file_line_and_key(site):
    text = site.read_text() + "cache: {max_entries: -1}\ncolour: blue\n"
    site.write_text(text)
    lines = text.splitlines()

    result = schooldns("check", "--config", str(site))

    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    problems = result.stderr.splitlines()
    assert len(problems) == 2
    assert (
        problems[0]
        == f"{site}:{lines.index('cache: {max_entries: -1}') + 1}: cache.max_entries: expected 0 to 10000000, got -1"
    )
    assert problems[1].startswith(f"{site}:{lines.index('colour: blue') + 1}: colour: unknown key 'colour'")


def test_check_on_yaml_that_does_not_parse_names_the_line(site):
    school_a = site.parent / "policies" / "school-a.yaml"
    school_a.write_text("id: school-a\nnetworks: [127.0.0.1/32\n")
    result = schooldns("check", "--config", str(site))
    assert result.returncode == 1
    assert one_line(result).startswith(f"{school_a}:3: invalid YAML: ")


@pytest.mark.parametrize("command", [["check"], ["serve"], ["explain", "school-a", "example.com"]])
def test_a_missing_config_file_is_one_line(tmp_path, command):
    missing = tmp_path / "nowhere.yaml"
    result = schooldns(command[0], "--config", str(missing), *command[1:])
    assert result.returncode == 1
    assert one_line(result).startswith(f"{missing}:1: cannot read file: ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--year", "20x6"], "schooldns report: --year: expected a year 2000 to 2100, got '20x6'"),
        (["--format", "pdf"], "schooldns report: --format: one of md, csv, json, got 'pdf'"),
        (["--merge", "missing.json"], "schooldns report: --merge missing.json: [Errno 2] No such file or directory"),
        (["--merge", "CONFIG"], "schooldns report: CONFIG:1: not JSON: Expecting value"),
    ],
)
def test_report_given_a_wrong_option_or_file_says_it_in_one_line(site, args, message):
    result = schooldns("report", "--config", str(site), *[str(site) if arg == "CONFIG" else arg for arg in args])
    assert result.returncode == 2
    assert one_line(result).startswith(message.replace("CONFIG", str(site)))


def test_report_before_any_rollups_shows_every_school_silent(site):
    result = schooldns("report", "--config", str(site), "--year", "2026", "--format", "csv")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[1:] == [
        "school-a,Tiểu học A,0,0,0,,,0,0,0",
        "school-b,THPT B,0,0,0,,,0,0,0",
    ]
