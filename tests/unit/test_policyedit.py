"""A school's policy file through the admin API: preconditions, the province's keys, the kept versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.control import config
from resolver.operations import policyedit
from resolver.operations.policyedit import PolicyText
from resolver.operations.refusals import Failure, Refused
from tests.support import harness

CURRENT = PolicyText(b"id: a\n")


def refusal(*args) -> Failure | None:
    try:
        policyedit.check_preconditions(*args)
    except Refused as exc:
        return exc.failure
    return None


def test_a_write_goes_ahead_only_over_the_version_it_read_or_as_a_new_file():
    assert refusal(CURRENT, CURRENT.etag, None, False) is None
    assert refusal(CURRENT, f'"x", {CURRENT.etag}', None, False) is None
    assert refusal(CURRENT, "*", None, False) is None
    assert refusal(CURRENT, '"x"', None, True) is Failure.STALE
    assert refusal(CURRENT, CURRENT.etag.strip('"'), None, True) is Failure.STALE  # unquoted is another tag
    assert refusal(None, CURRENT.etag, None, True) is Failure.STALE
    assert refusal(CURRENT, None, None, True) is Failure.PRECONDITION_REQUIRED
    assert refusal(None, None, "*", True) is None
    assert refusal(None, None, "*", False) is Failure.FORBIDDEN  # only the province creates
    assert refusal(CURRENT, None, "*", True) is Failure.STALE
    assert refusal(None, None, '"x"', True) is Failure.BAD_REQUEST


def test_ids_name_no_path_and_no_reserved_name(tmp_path):
    cfg = config.load_config(harness.write_site(tmp_path, ["192.0.2.53:53"]))
    assert policyedit.school_path(cfg, "thpt-nguyen-du") == cfg.policies_dir / "thpt-nguyen-du.yaml"
    for wrong in ("", "..", "a/b", "A", "a.b", "x" * 64, "a\x00"):
        with pytest.raises(Refused) as refused:
            policyedit.school_path(cfg, wrong)
        assert refused.value.failure is Failure.BAD_REQUEST
    for reserved in ("province", "unknown"):
        with pytest.raises(Refused) as refused:
            policyedit.school_path(cfg, reserved)
        assert refused.value.failure is Failure.NOT_FOUND


def test_a_school_token_keeps_the_provinces_keys(tmp_path):
    path = tmp_path / "a.yaml"
    current = PolicyText(b"id: a\nlevel: primary\nnetworks: [192.0.2.0/28]\nblock: [games]\n")
    policyedit.check_province_keys(current, b"id: a\nlevel: primary\nnetworks: [192.0.2.0/28]\nblock: []\n", path)
    with pytest.raises(Refused) as refused:
        policyedit.check_province_keys(current, b"id: a\nlevel: secondary\nnetworks: [192.0.2.0/27]\n", path)
    assert refused.value.failure is Failure.FORBIDDEN
    assert refused.value.message.startswith("a school token may not change level, networks: the province sets")
    with pytest.raises(Refused) as refused:
        policyedit.check_province_keys(current, b"id: [a\n", path)
    assert refused.value.failure is Failure.INVALID and refused.value.problems[0].file == str(path)


def test_the_versions_replaced_are_kept_up_to_the_bound(tmp_path):
    cfg = config.load_config(harness.write_site(tmp_path, ["192.0.2.53:53"]))
    path = cfg.policies_dir / "school-a.yaml"
    path.chmod(0o640)
    for n in range(policyedit.HISTORY_KEEP + 5):
        policyedit.replace(cfg, "school-a", path, f"# version {n + 1}\n".encode(), policyedit.read(path))
    assert path.read_text() == f"# version {policyedit.HISTORY_KEEP + 5}\n"
    assert path.stat().st_mode & 0o777 == 0o640  # the file's mode is kept
    kept = sorted(
        (cfg.state_dir / policyedit.HISTORY_DIR / "school-a").iterdir(), key=lambda p: int(p.name.split("-")[0])
    )
    assert len(kept) == policyedit.HISTORY_KEEP
    assert [int(p.name.split("-")[0]) for p in kept] == list(range(6, policyedit.HISTORY_KEEP + 6))
    assert kept[0].read_text() == "# version 5\n"
    assert kept[-1].read_text() == f"# version {policyedit.HISTORY_KEEP + 4}\n"
    policyedit.restore(path, PolicyText(b"id: school-a\n"))
    assert path.read_bytes() == b"id: school-a\n"


@pytest.mark.parametrize(
    "before, after",
    [
        pytest.param(
            "id: a\nallow: [x.vn, y.vn]   # learning sites\nname: A\n",
            "id: a\nallow: [x.vn, y.vn, new.example]   # learning sites\nname: A\n",
            id="flow",
        ),
        pytest.param(
            "id: a\nallow:\n  - x.vn    # maths\n  # later: more\n  - y.vn\nname: A\n",
            "id: a\nallow:\n  - x.vn    # maths\n  # later: more\n  - y.vn\n  - new.example\nname: A\n",
            id="block",
        ),
        pytest.param("allow:\n- x.vn\n- y.vn", "allow:\n- x.vn\n- y.vn\n- new.example\n", id="block-at-the-end"),
        pytest.param("id: a\nallow: []\n", "id: a\nallow: [new.example]\n", id="empty"),
        pytest.param("id: a\nallow:\nname: A\n", "id: a\nallow: [new.example]\nname: A\n", id="null"),
        pytest.param("allow: ~\n", "allow: [new.example]\n", id="tilde"),
        pytest.param("id: a\nname: A", "id: a\nname: A\nallow: [new.example]\n", id="missing"),
        pytest.param("id: a\nallow: [new.example]\n", "id: a\nallow: [new.example]\n", id="there-already"),
    ],
)
def test_a_name_is_added_to_a_list_as_the_file_writes_it(before, after):
    assert policyedit.with_entry(before.encode(), "allow", "new.example", Path("a.yaml")).decode() == after


def test_a_name_that_yaml_reads_as_something_else_is_quoted():
    assert policyedit.with_entry(b"deny: [x.vn]\n", "deny", "true", Path("a.yaml")) == b'deny: [x.vn, "true"]\n'


def test_a_list_that_is_no_list_is_not_edited():
    with pytest.raises(Refused) as refused:
        policyedit.with_entry(b"allow: x.vn\n", "allow", "new.example", Path("a.yaml"))
    assert refused.value.failure is Failure.INVALID
    with pytest.raises(Refused) as refused:
        policyedit.with_entry(b"allow: &a [x.vn]\n", "allow", "new.example", Path("a.yaml"))
    assert refused.value.failure is Failure.INVALID  # anchors are refused before anything is composed
