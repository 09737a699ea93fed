"""Sign-in sessions: signed, bound to their token (revoked or replaced, the session ends), expiring, unforgeable."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.operations import sessions, tokens

SHA = tokens.digest("sdns_secret")
OTHER_SHA = tokens.digest("sdns_other")


def known(*entries: tuple[str, str]) -> tokens.Tokens:
    return tokens.Tokens(
        Path("tokens.yaml"), {sha: tokens.Token(name, tokens.Role.parse("viewer"), sha, 0.0) for name, sha in entries}
    )


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_names_its_token_until_it_ends():
    clock = Clock()
    made = sessions.Sessions(b"k" * 32, clock)
    value = made.issue("grafana.read-only", SHA)  # a name may hold dots
    assert "sdns_secret" not in value and SHA not in value
    assert made.check(value, known(("grafana.read-only", SHA))).name == "grafana.read-only"
    clock.now += sessions.SESSION_SECONDS - 1
    assert made.check(value, known(("grafana.read-only", SHA))) is not None
    clock.now += 1
    assert made.check(value, known(("grafana.read-only", SHA))) is None


@pytest.mark.parametrize(
    "tokens_now",
    [
        known(),  # revoked
        known(("viewer-1", OTHER_SHA)),  # revoked, and a new token given the same name
    ],
)
def test_a_session_ends_with_its_token(tokens_now):
    made = sessions.Sessions(b"k" * 32, Clock())
    assert made.check(made.issue("viewer-1", SHA), tokens_now) is None


def test_a_session_cannot_be_made_without_the_key():
    clock = Clock()
    value = sessions.Sessions(b"k" * 32, clock).issue("viewer-1", SHA)
    tokens_now = known(("viewer-1", SHA))
    assert sessions.Sessions(b"x" * 32, clock).check(value, tokens_now) is None  # a restart makes a new key
    name, ends, mac = value.rsplit(".", 2)
    made = sessions.Sessions(b"k" * 32, clock)
    longer = f"{name}.{int(ends) + 86_400}.{mac}"
    altered = f"{name}.{ends}.{mac[:-1]}{'1' if mac[-1] == '0' else '0'}"
    for forged in (longer, altered, "", "viewer-1", "a.b", "viewer-1.x.y", None):
        assert made.check(forged, tokens_now) is None, forged
