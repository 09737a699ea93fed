"""`schooldns bundle init / publish / rotate` as real processes: output, exit statuses, one line per mistake."""

from __future__ import annotations

from tests.integration.test_cli import one_line, schooldns
from tests.support.harness import write_site


def test_init_publish_rotate_and_mistakes_in_one_line(tmp_path):
    site = write_site(tmp_path / "hub", ["127.0.0.1:53"])
    repo, keys = str(tmp_path / "repo"), str(tmp_path / "keys")
    publish = ["bundle", "publish", "--repo", repo, "--keys", keys, "--config", str(site)]

    missing = schooldns(*publish)
    assert missing.returncode == 1
    assert one_line(missing) == f"{repo}: not a repository (`schooldns bundle init` makes one)"

    init = schooldns("bundle", "init", "--repo", repo, "--keys", keys)
    assert (init.returncode, init.stderr) == (0, "")
    assert init.stdout.splitlines() == [
        f"created {repo}: give every instance a copy of {repo}/metadata/1.root.json as sync.trusted_root",
        f"keys in {keys}: move root.pem offline now (docs/sync.md); the hub publishes with the other three",
    ]
    first = schooldns(*publish)
    assert (first.returncode, first.stdout, first.stderr) == (0, "published version 1\n", "")
    again = schooldns(*publish)
    assert (again.returncode, again.stdout) == (0, "unchanged: version 1\n")

    unknown = schooldns(*publish, "--allow-shrink", "x")
    assert unknown.returncode == 2
    assert one_line(unknown).startswith("schooldns bundle: --allow-shrink x: no such category")

    rotated = schooldns("bundle", "rotate", "--repo", repo, "--keys", keys, "--role", "timestamp")
    assert (rotated.returncode, rotated.stdout) == (
        0,
        "wrote metadata/2.root.json; instances take it at their next sync\n",
    )
