"""Tenants from Secrets labelled ``gantry.dev/tenant`` (pure).

A tenant Secret (``type: Opaque``) holds, under ``data`` or ``stringData``:

``apiKey``             the API key callers send as ``Authorization: Bearer <key>`` (required,
                       at least 16 characters)
``models``             served model names the key may use, separated by commas or whitespace;
                       ``*`` allows every model (required: no key is allowed everything by
                       accident)
``requestsPerMinute``  optional whole number; absent or 0: no request limit
``tokensPerMinute``    optional whole number (prompt + completion tokens); absent or 0: none

The label's value is the tenant's name (in metrics, audit lines and limits). A tenant may have
several Secrets (several keys, e.g. during a rotation); its limits are shared by its keys and
taken from the Secret whose key made the request. Only a SHA-256 of each key is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TENANT_LABEL = "gantry.dev/tenant"
MIN_KEY_LENGTH = 16


class TenantError(ValueError):
    """A tenant Secret that cannot be used; the message names the Secret, the key and the fix."""


@dataclass(frozen=True)
class Tenant:
    name: str
    secret: str  # namespace/name of the Secret
    key_hash: bytes
    #: Served model names allowed; None: every model.
    models: frozenset[str] | None
    requests_per_minute: int  # 0: unlimited
    tokens_per_minute: int  # 0: unlimited

    def allows(self, served_name: str) -> bool:
        return self.models is None or served_name in self.models


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _field(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    string_data = obj.get("stringData") or {}
    if key in string_data:
        return str(string_data[key])
    data = obj.get("data") or {}
    if key not in data:
        return None
    try:
        return base64.b64decode(data[key], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise TenantError(f"{where}: data.{key} is not base64 of UTF-8 text") from None


def _limit(obj: Mapping[str, Any], key: str, where: str) -> int:
    text = _field(obj, key, where)
    if text is None or not text.strip():
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise TenantError(f"{where}: {key} must be a whole number, got {text!r}") from None
    if value < 0:
        raise TenantError(f"{where}: {key} must be 0 (no limit) or more, got {value}")
    return value


def parse_secret(obj: Mapping[str, Any]) -> Tenant:
    meta = obj["metadata"]
    where = f"Secret {meta.get('namespace', '')}/{meta['name']}"
    name = (meta.get("labels") or {}).get(TENANT_LABEL, "")
    if not name:
        raise TenantError(f"{where}: label {TENANT_LABEL} must name the tenant")
    key = _field(obj, "apiKey", where)
    if key is None or len(key.strip()) < MIN_KEY_LENGTH:
        raise TenantError(
            f"{where}: apiKey must hold a key of at least {MIN_KEY_LENGTH} characters"
        )
    models_text = _field(obj, "models", where)
    if models_text is None or not models_text.strip():
        raise TenantError(f"{where}: models must list served model names (or '*' for all)")
    names = frozenset(n for n in re.split(r"[\s,]+", models_text) if n)
    return Tenant(
        name=name,
        secret=f"{meta.get('namespace', '')}/{meta['name']}",
        key_hash=hash_key(key.strip()),
        models=None if "*" in names else names,
        requests_per_minute=_limit(obj, "requestsPerMinute", where),
        tokens_per_minute=_limit(obj, "tokensPerMinute", where),
    )


@dataclass
class Tenants:
    """The tenants' keys by Secret; a deleted Secret's key stops working at once."""

    by_secret: dict[str, Tenant] = field(default_factory=dict)
    by_hash: dict[bytes, Tenant] = field(default_factory=dict)

    def set(self, secret: str, tenant: Tenant | None) -> None:
        if tenant is None:
            self.by_secret.pop(secret, None)
        else:
            self.by_secret[secret] = tenant
        self._index()

    def reset(self, tenants: Iterable[tuple[str, Tenant]]) -> None:
        self.by_secret = dict(tenants)
        self._index()

    def authenticate(self, key: str) -> Tenant | None:
        return self.by_hash.get(hash_key(key))

    def __len__(self) -> int:
        return len(self.by_secret)

    def _index(self) -> None:
        self.by_hash = {t.key_hash: t for _, t in sorted(self.by_secret.items())}
