"""Tenant Secrets: parsing, errors naming the field, hashes only, revocation."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gantry_gateway.tenants import TenantError, Tenants, hash_key, parse_secret

KEY = "sk-team-a-0123456789abcdef"


def secret(name: str = "team-a", tenant: str = "team-a", **data: str) -> dict[str, Any]:
    values = {"apiKey": KEY, "models": "gpt-oss-20b, qwen3-32b"} | data
    return {
        "metadata": {"name": name, "namespace": "gantry", "labels": {"gantry.dev/tenant": tenant}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def test_parse_keeps_only_a_hash() -> None:
    tenant = parse_secret(secret(requestsPerMinute="60", tokensPerMinute="10000"))
    assert tenant.name == "team-a"
    assert tenant.key_hash == hash_key(KEY)
    assert KEY not in repr(tenant)
    assert tenant.models == frozenset({"gpt-oss-20b", "qwen3-32b"})
    assert (tenant.requests_per_minute, tenant.tokens_per_minute) == (60, 10000)
    assert tenant.allows("gpt-oss-20b")
    assert not tenant.allows("kimi-k2")


def test_star_allows_every_model() -> None:
    assert parse_secret(secret(models="*")).allows("anything")


def test_string_data_is_read_too() -> None:
    obj = secret()
    obj["stringData"] = {"models": "only-this"}
    assert parse_secret(obj).models == frozenset({"only-this"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"apiKey": "short"}, "apiKey must hold a key of at least 16"),
        ({"models": " "}, "models must list"),
        ({"requestsPerMinute": "ten"}, "requestsPerMinute must be a whole number"),
        ({"tokensPerMinute": "-1"}, "tokensPerMinute must be 0"),
    ],
)
def test_bad_secrets_name_the_field(data: dict[str, str], message: str) -> None:
    with pytest.raises(TenantError, match=message):
        parse_secret(secret(**data))


def test_deleted_secret_revokes_its_key() -> None:
    tenants = Tenants()
    tenants.set("gantry/team-a", parse_secret(secret()))
    other = "sk-team-b-0123456789abcdef"
    tenants.set("gantry/team-b", parse_secret(secret("team-b", "team-b", apiKey=other)))
    assert tenants.authenticate(KEY) is not None
    tenants.set("gantry/team-a", None)
    assert tenants.authenticate(KEY) is None
    found = tenants.authenticate(other)
    assert found is not None
    assert found.name == "team-b"
    assert tenants.authenticate("wrong-key-0123456789") is None
