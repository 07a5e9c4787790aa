"""Certificates and keys of the local control plane, made with the ``openssl`` command.

Everything is ECDSA P-256 (fast to generate, accepted by every component): one self-signed CA
that signs the apiserver's serving certificate and the client certificates, plus a separate key
pair that signs and verifies service-account tokens.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of every file :func:`generate` writes."""

    directory: Path
    ca: KeyPair
    serving: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kwok: KeyPair
    service_account_key: Path
    service_account_pub: Path


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`openssl {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)


def _ca(directory: Path) -> KeyPair:
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _ec_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-out", str(pair.cert),
        "-days", str(CA_DAYS), "-subj", "/CN=gantry-local-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return pair


def _leaf(
    directory: Path, ca: KeyPair, name: str, subject: str, usage: str, san: str | None = None
) -> KeyPair:
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    _ec_key(pair.key)
    _openssl("req", "-new", "-key", str(pair.key), "-out", str(csr), "-subj", subject)
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "authorityKeyIdentifier=keyid",
    ]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(secrets.randbits(120) | 1),
        "-days", str(LEAF_DAYS), "-extfile", str(ext), "-out", str(pair.cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return pair


def generate(directory: Path) -> Pki:
    """Write a fresh CA, serving/client certificates and service-account keys."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the `openssl` command is needed to generate the cluster's certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory)
    serving = _leaf(
        directory,
        ca,
        "apiserver",
        "/CN=kube-apiserver",
        "serverAuth",
        # The in-cluster names and the first service IP are listed only so that certificate
        # validation matches what clients expect; nothing listens on the service IP.
        "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1",
    )
    admin = _leaf(directory, ca, "admin", "/O=system:masters/CN=gantry-admin", "clientAuth")
    kcm = _leaf(
        directory, ca, "controller-manager", "/CN=system:kube-controller-manager", "clientAuth"
    )
    scheduler = _leaf(directory, ca, "scheduler", "/CN=system:kube-scheduler", "clientAuth")
    # kwok patches node and pod status on behalf of every fake kubelet: it runs as an admin.
    kwok = _leaf(directory, ca, "kwok", "/O=system:masters/CN=kwok", "clientAuth")
    sa_key = directory / "service-account.key"
    sa_pub = directory / "service-account.pub"
    _ec_key(sa_key)
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    return Pki(directory, ca, serving, admin, kcm, scheduler, kwok, sa_key, sa_pub)


@dataclass(frozen=True)
class LwsPki:
    """The LeaderWorkerSet manager's certificates (see :func:`generate_lws`)."""

    #: The webhook server's certificate, as ``tls.crt``/``tls.key`` in its own directory (the
    #: names controller-runtime's webhook server reads from its certDir).
    webhook_dir: Path
    webhook: KeyPair
    #: Its client certificate for the apiserver.
    client: KeyPair


def generate_lws(directory: Path, ca: KeyPair) -> LwsPki:
    """Certificates for LWS's manager, signed by the cluster ``ca``: a webhook serving
    certificate for ``https://127.0.0.1:<port>`` (the apiserver calls it by IP) and a client
    certificate. The manager runs as an admin (``system:masters``), like kwok: it manages pods,
    StatefulSets, Services and its own resources, and reviews tokens for its metrics endpoint."""
    webhook_dir = directory / "lws-webhook"
    webhook_dir.mkdir(parents=True, exist_ok=True)
    webhook = _leaf(
        webhook_dir, ca, "tls", "/CN=lws-webhook", "serverAuth", "IP:127.0.0.1,DNS:localhost"
    )
    client = _leaf(
        directory, ca, "lws-controller-manager",
        "/O=system:masters/CN=lws-controller-manager", "clientAuth",
    )  # fmt: skip
    return LwsPki(webhook_dir, webhook, client)
