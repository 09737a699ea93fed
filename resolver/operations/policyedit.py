"""A school's policy file through the admin API: read with its ETag, checked like `schooldns check`, replaced."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import yaml

from resolver import durable, yamlfile
from resolver.control import config, snapshots
from resolver.filtering import lists, policyfile, schools
from resolver.operations.refusals import Failure, Refused
from resolver.yamlfile import ConfigError, Problem

HISTORY_DIR = "policy-history"  # in state_dir: <school id>/<n>-<UTC time>-<sha256 prefix>.yaml, each version replaced
HISTORY_KEEP = 20  # versions kept per school, the oldest removed first
PROVINCE_KEYS = ("id", "level", "networks")  # in a school's file, only a province token changes these
_ID_RE = re.compile(r"^[a-z0-9-]{1,63}$")


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyText:
    """A policy file's bytes as read, and the ETag that names them."""

    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


def school_path(cfg: config.Config, school_id: str) -> Path:
    """The file of school `school_id` in the policies directory; refused for an id that is no school's."""
    if not _ID_RE.match(school_id):
        raise Refused(Failure.BAD_REQUEST, "a school id is 1 to 63 lower-case letters, digits and '-'")
    if school_id in policyfile.RESERVED_IDS:
        raise Refused(Failure.NOT_FOUND, f"'{school_id}' is no school's id")
    return cfg.policies_dir / f"{school_id}.yaml"


def read(path: Path) -> PolicyText | None:
    """The file's content; None when there is none."""
    try:
        return PolicyText(path.read_bytes())
    except FileNotFoundError:
        return None


def check_preconditions(
    current: PolicyText | None, if_match: str | None, if_none_match: str | None, may_create: bool
) -> None:
    """A write goes ahead only over the version its writer read (If-Match), or as a new file (If-None-Match: *)."""
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise Refused(Failure.BAD_REQUEST, "If-None-Match takes only *: create the file if there is none")
        if current is not None:
            raise Refused(Failure.STALE, "the school's file exists already: GET it and send If-Match with its ETag")
        if not may_create:
            raise Refused(Failure.FORBIDDEN, "only a province token creates a school's file")
        return
    require_precondition(if_match, if_none_match)
    assert if_match is not None
    tags = {tag.strip() for tag in if_match.split(",")}
    if current is None:
        raise Refused(Failure.STALE, "the school has no file (create one with If-None-Match: *)")
    if "*" not in tags and current.etag not in tags:
        raise Refused(Failure.STALE, "the file changed since you read it: GET it again and redo your edit")


def require_precondition(if_match: str | None, if_none_match: str | None) -> None:
    """A write must say which version it replaces (If-Match) or that it makes a new file (If-None-Match)."""
    if if_match is None and if_none_match is None:
        raise Refused(
            Failure.PRECONDITION_REQUIRED,
            "send If-Match with the ETag of the version you edited (GET the policy first), "
            "or If-None-Match: * to create a new school's file",
        )


def decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(
            Failure.INVALID,
            f"{path.name} does not pass the checks",
            [Problem(str(path), 1, "", f"not UTF-8 text (byte {exc.start})")],
        ) from None


def check_province_keys(current: PolicyText | None, data: bytes, path: Path) -> None:
    """Refuse a school token's change of `id`, `level` or `networks` (PROVINCE_KEYS): the province sets them."""
    candidate = _parsed(decode(data, path), path)
    before = _parsed(current.data.decode("utf-8", errors="replace"), path, broken_ok=True) if current else {}
    changed = [key for key in PROVINCE_KEYS if candidate.get(key) != before.get(key)]
    if changed:
        raise Refused(
            Failure.FORBIDDEN,
            f"a school token may not change {', '.join(changed)}: the province sets "
            f"{', '.join(PROVINCE_KEYS)} of a school's file",
        )


def _parsed(text: str, path: Path, broken_ok: bool = False) -> dict[str, object]:
    try:
        data = yamlfile.parse_yaml(text, str(path)).data
    except ConfigError as exc:
        if broken_ok:
            return {}
        raise Refused(Failure.INVALID, f"{path.name} does not pass the checks", exc.problems) from None
    return data if isinstance(data, dict) else {}


def with_entry(data: bytes, key: str, name: str, path: Path) -> bytes:
    """The file's text with `name` added to its top-level list `key` (`allow`, `deny`), the rest as written.

    A flow list (`allow: [a, b]`) gets `, name` after its last item, a block list a `- name` line
    after its last, with the same indent; a missing or empty key becomes `key: [name]`. The same
    bytes come back if the list holds `name` already. Comments and layout stay; the result is
    checked like any edit (validate).
    """
    text = decode(data, path)
    top = _parsed(text, path)  # refuses anchors, aliases, deep nesting: then composing it again is safe
    value = top.get(key)
    if isinstance(value, list) and name in value:
        return data
    if value is not None and not isinstance(value, list):
        raise Refused(
            Failure.INVALID,
            f"{path.name}: `{key}` is not a list; fix the file first",
            [Problem(str(path), 1, key, "expected a list of names")],
        )
    item = name if yaml.safe_load(name) == name else json.dumps(name)  # a plain scalar unless it reads as another
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = next((v for k, v in root.value if k.value == key), None) if isinstance(root, yaml.MappingNode) else None
    if node is None:
        edited = text + ("" if not text or text.endswith("\n") else "\n") + f"{key}: [{item}]\n"
    elif isinstance(node, yaml.ScalarNode):  # `key:` or `key: ~`
        start, end = node.start_mark.index, node.end_mark.index
        edited = text[:start] + ("" if text[start - 1] == " " else " ") + f"[{item}]" + text[end:]
    elif not node.value:  # `key: []`
        edited = text[: node.start_mark.index] + f"[{item}]" + text[node.end_mark.index :]
    elif node.flow_style:
        at = node.value[-1].end_mark.index
        edited = text[:at] + f", {item}" + text[at:]
    else:
        first = node.value[0].start_mark.index
        indent = text[text.rfind("\n", 0, first) + 1 : first]  # e.g. "  - "
        line_end = text.find("\n", node.value[-1].end_mark.index)
        if line_end < 0:
            edited = text + "\n" + indent + item + "\n"
        else:
            edited = text[: line_end + 1] + indent + item + "\n" + text[line_end + 1 :]
    return edited.encode("utf-8")


def validate(cfg: config.Config, path: Path, data: bytes, own_file_only: bool) -> None:
    """Check the policies as they would be with `data` in `path`, as `schooldns check` does; Refused (INVALID) if not.

    The candidate goes into a staging copy of the policies directory, which is loaded with the
    lists' categories; then the default school and the school directory are checked. Problems
    name the real files. With `own_file_only` (a school token), problems in other files are not
    shown, only that there are some: they may hold other schools' data.
    """
    text = decode(data, path)
    try:
        sources = lists.load_sources(cfg.blocklists_dir)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".policy-check-", dir=cfg.state_dir) as staging:
            for entry in os.scandir(cfg.policies_dir):
                if entry.name.endswith((".yaml", ".yml")) and entry.name != path.name and entry.is_file():
                    shutil.copyfile(entry.path, os.path.join(staging, entry.name))
            Path(staging, path.name).write_text(text, encoding="utf-8")
            policies = policyfile.load_policies(Path(staging), sources.categories, shown_as=cfg.policies_dir)
        snapshots.find_default_school(cfg, policies)
        schools.SchoolDirectory.build(policies.networks())
    except ConfigError as exc:
        problems = exc.problems
    except schools.DirectoryError as exc:
        problems = [Problem(str(path), 1, "networks", str(exc))]
    else:
        return
    if own_file_only:
        others = [problem for problem in problems if problem.file != str(path)]
        problems = [problem for problem in problems if problem.file == str(path)]
        if others:
            problems.append(
                Problem(
                    str(path),
                    1,
                    "",
                    f"{len(others)} problem(s) in other files (province.yaml, the config or other schools' files): "
                    "the province's administrators must fix them first",
                )
            )
    raise Refused(Failure.INVALID, f"{path.name} does not pass the checks", problems)


def replace(cfg: config.Config, school_id: str, path: Path, data: bytes, current: PolicyText | None) -> None:
    """Write `data` into `path` in one rename, the version it replaces kept under state_dir (HISTORY_DIR)."""
    mode = 0o644
    try:
        if current is not None:
            _keep(cfg.state_dir / HISTORY_DIR / school_id, current)
            mode = stat.S_IMODE(path.stat().st_mode)
        durable.replace_synced(path, data, mode)
    except OSError as exc:
        raise Refused(Failure.NOT_APPLIED, f"cannot write {path.name}: {exc.strerror or exc}") from None


def remove_stale_temporaries(cfg: config.Config) -> list[Path]:
    """Before serving: the temporary files of policy writes killed midway (policies and their history)."""
    history = cfg.state_dir / HISTORY_DIR
    directories = (
        [cfg.policies_dir, *(p for p in history.iterdir() if p.is_dir())] if history.is_dir() else [cfg.policies_dir]
    )
    return [stale for directory in directories for stale in durable.remove_stale_temporaries_in(directory)]


def restore(path: Path, previous: PolicyText | None) -> None:
    """Put back what `path` held before `replace` (nothing: remove it)."""
    if previous is None:
        path.unlink(missing_ok=True)
        durable.sync_directory(path.parent)
    else:
        durable.replace_synced(path, previous.data, stat.S_IMODE(path.stat().st_mode))


def _keep(directory: Path, previous: PolicyText) -> None:
    """Keep `previous` as <n>-<UTC time>-<sha256 prefix>.yaml, n counting up; only the last HISTORY_KEEP stay."""
    directory.mkdir(parents=True, exist_ok=True)
    kept = sorted((int(path.name.split("-")[0]), path) for path in directory.glob("[0-9]*-*.yaml"))
    number = kept[-1][0] + 1 if kept else 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"{number}-{stamp}-{previous.sha256[:12]}.yaml"
    durable.replace_synced(path, previous.data)
    for _, old in kept[: max(0, len(kept) + 1 - HISTORY_KEEP)]:
        old.unlink(missing_ok=True)
