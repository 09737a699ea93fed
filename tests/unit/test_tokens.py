"""Admin API tokens: roles, the tokens file (hashes only, mode 0600), add, revoke, and a server's view of the file."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from resolver.errors import UsageError
from resolver.operations import tokens
from resolver.operations.tokens import Role, RoleKind
from resolver.yamlfile import ConfigError


def test_roles_are_province_viewer_or_one_school():
    assert Role.parse("province") == Role(RoleKind.PROVINCE)
    assert Role.parse("viewer") == Role(RoleKind.VIEWER)
    assert Role.parse("school:thpt-nguyen-du") == Role(RoleKind.SCHOOL, "thpt-nguyen-du")
    assert str(Role.parse("school:a")) == "school:a"
    for wrong in ("admin", "school", "school:", "school:A", "school:-a", "province:x", "school:a/../b", "doh:"):
        with pytest.raises(ValueError, match="expected province, viewer, school:<school-id> or doh:<school-id>"):
            Role.parse(wrong)


def test_what_each_role_reaches():
    school = Role.parse("school:a")
    assert school.may_read_school("a") and not school.may_read_school("b")
    assert school.may_write_school("a") and not school.may_write_school("b")
    viewer = Role.parse("viewer")
    assert viewer.may_read_school("b") and not viewer.may_write_school("b")
    province = Role.parse("province")
    assert province.may_read_school("b") and province.may_write_school("b")


def test_add_keeps_only_the_hash_in_a_file_only_its_owner_reads(tmp_path):
    path = tmp_path / "state" / "tokens.yaml"
    token, secret = tokens.add(path, Role.parse("school:a"), "it-a")
    assert secret.startswith(tokens.TOKEN_PREFIX) and len(secret) > 40
    text = path.read_text()
    assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tokens.load(path).find(secret) == token
    assert tokens.load(path).find(secret + "x") is None
    assert (token.name, token.role) == ("it-a", Role.parse("school:a"))


def test_names_are_made_from_the_role_and_must_be_unique(tmp_path):
    path = tmp_path / "tokens.yaml"
    first, _ = tokens.add(path, Role.parse("viewer"))
    second, _ = tokens.add(path, Role.parse("viewer"))
    assert (first.name, second.name) == ("viewer-1", "viewer-2")
    assert tokens.add(path, Role.parse("school:a"))[0].name == "school-a-1"
    with pytest.raises(UsageError, match="a token named 'viewer-1' exists already"):
        tokens.add(path, Role.parse("province"), "viewer-1")
    with pytest.raises(UsageError, match="--name 'Bad Name'"):
        tokens.add(path, Role.parse("province"), "Bad Name")


def test_revoke_removes_one_and_names_the_known_ones_when_it_finds_none(tmp_path):
    path = tmp_path / "tokens.yaml"
    kept, kept_secret = tokens.add(path, Role.parse("viewer"), "v")
    gone, gone_secret = tokens.add(path, Role.parse("province"), "p")
    assert tokens.revoke(path, "p") == gone
    assert tokens.load(path).find(gone_secret) is None
    assert tokens.load(path).find(kept_secret) == kept
    with pytest.raises(UsageError, match=r"no token named 'p' in .* \(known: v\)"):
        tokens.revoke(path, "p")


def test_a_file_others_may_read_is_refused_in_one_line(tmp_path):
    path = tmp_path / "tokens.yaml"
    tokens.add(path, Role.parse("viewer"))
    os.chmod(path, 0o644)
    with pytest.raises(tokens.TokenFileError) as caught:
        tokens.load(path)
    assert str(caught.value) == (
        f"{path}: the tokens file is readable by other users (mode 0644); run: chmod 600 {path}"
    )


def test_a_malformed_file_names_the_line_and_key(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        "  - {name: a, role: school:A, sha256: x, created: 0}\n"
        "  - {name: b, role: viewer, sha256: xyz, created: 0}\n"
    )
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as caught:
        tokens.load(path)
    assert str(caught.value).splitlines() == [
        f"{path}:2: tokens[0].role: unknown role 'school:A': "
        "expected province, viewer, school:<school-id> or doh:<school-id>",
        f"{path}:3: tokens[1].sha256: expected the 64 hex digits of a SHA-256",
    ]


def test_a_server_reads_the_file_again_when_it_changes_and_accepts_nothing_while_it_is_unsafe(tmp_path):
    path = tmp_path / "tokens.yaml"
    current = tokens.TokenFile(path)
    assert current.current().by_hash == {} and current.problem is None  # no file: no tokens
    token, secret = tokens.add(path, Role.parse("viewer"), "v")
    assert current.current().find(secret) == token
    tokens.revoke(path, "v")
    assert current.current().find(secret) is None  # revoked: refused at the next request
    _, secret = tokens.add(path, Role.parse("viewer"), "w")
    os.chmod(path, 0o640)
    assert current.current().find(secret) is None
    assert current.problem is not None and "readable by other users" in current.problem
    os.chmod(path, 0o600)
    assert current.current().find(secret) is not None and current.problem is None
