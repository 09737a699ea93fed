"""Token roles: a doh:<school> token is one school's and no admin token."""

from __future__ import annotations

import pytest

from resolver import tokenfile
from resolver.operations import tokens


def test_a_doh_role_is_one_schools_and_no_admin_role():
    role = tokens.Role.parse("doh:school-a")
    assert role == tokenfile.Role(tokenfile.RoleKind.DOH, "school-a") and str(role) == "doh:school-a"
    assert not role.is_admin
    assert not role.may_read_school("school-a") and not role.may_write_school("school-a")
    for admin in ("province", "viewer", "school:school-a"):
        assert tokens.Role.parse(admin).is_admin and tokens.Role.parse(admin).may_read_school("school-a")
    for bad in ("doh", "doh:", "doh:School A", "dns:school-a"):
        with pytest.raises(ValueError, match="doh:<school-id>"):
            tokens.Role.parse(bad)
