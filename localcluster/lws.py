"""LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``) in the local cluster: pure parts.

A :class:`~localcluster.cluster.LocalCluster` started with ``leaderworkerset=True`` runs LWS's
controller manager (built from ``sigs.k8s.io/lws`` by :mod:`localcluster.build`) as one of its
processes. What differs from LWS's own install (``config/default``):

- its CRDs are applied as they are in the module's ``config/crd/bases`` (without the
  conversion-webhook patch: v1 is the only version, so nothing needs converting);
- its webhook configurations (``config/webhook``, with the kustomize patches that restrict the
  pod webhooks to pods labelled with an LWS name, and the ``lws-`` name prefix) call
  ``https://127.0.0.1:<port>/<path>`` instead of an in-cluster Service, with the cluster CA as
  ``caBundle`` (:func:`webhook_configurations`);
- the manager reads a ``Configuration`` (:func:`manager_configuration`) that turns its internal
  certificate management off (the serving certificate comes from :mod:`localcluster.pki`, IP SAN
  127.0.0.1), leader election off, and binds the webhook, metrics and health probes to
  127.0.0.1 only.

The process runner (:mod:`localcluster.runner`) runs processes for LWS pods like any runtime
pod; the few ways their environment differs from a kubelet's are :data:`RUNNER_SUBSTITUTIONS`,
applied by :func:`resolve_env`.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GROUP = "leaderworkerset.x-k8s.io"
API_VERSION = f"{GROUP}/v1"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
SIZE_ANNOTATION = "leaderworkerset.sigs.k8s.io/size"
#: The env LWS's pod webhook injects, as literal values, at the front of every container's env
#: (``pkg/utils/pod/pod_utils.go`` AddLWSVariables in v0.9.0): the leader's DNS name under the
#: group's headless Service (``<lws>-<group>.<subdomain>.<namespace>``), the group size and the
#: pod's index in its group (0 for the leader).
LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
GROUP_SIZE_ENV = "LWS_GROUP_SIZE"
WORKER_INDEX_ENV = "LWS_WORKER_INDEX"
INJECTED_ENV = (LEADER_ADDRESS_ENV, GROUP_SIZE_ENV, WORKER_INDEX_ENV)

#: The CRDs the manager needs (it runs a DisaggregatedSet controller too, which fails to start
#: without its CRD), as files under the component's ``config/crd/bases`` and as objects.
CRD_FILES = (
    "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "disaggregatedset.x-k8s.io_disaggregatedsets.yaml",
)
CRD_NAMES = (
    "leaderworkersets.leaderworkerset.x-k8s.io",
    "disaggregatedsets.disaggregatedset.x-k8s.io",
)
#: config/default's ``namePrefix``: the webhook configurations' names as LWS installs them.
NAME_PREFIX = "lws-"
MUTATING_PATH = "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset"
#: The file names controller-runtime's webhook server reads from its certDir.
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"

#: (what, why): the ways the process for an LWS pod differs from what a kubelet would run.
RUNNER_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (
        f"{LEADER_ADDRESS_ENV}: <lws>-<group>.<subdomain>.<namespace> -> the leader pod's podIP",
        "the local cluster has no DNS (and Services cannot route to loopback pod IPs); the "
        "leader is the group's pod with worker-index 0. A worker's process starts once its "
        "leader has an IP (until then the name would not resolve either) and is restarted if "
        "the leader comes back with another IP",
    ),
)


class LwsManifestError(ValueError):
    """LWS's manifests are not shaped as this module expects (names the file and the field)."""


# -- manifests ---------------------------------------------------------------------------------


def _apply_ops(document: dict[str, Any], ops: Sequence[Mapping[str, Any]], source: str) -> None:
    """Apply kustomize's JSON6902 ``replace``/``add`` ops on ``/webhooks/<index>``."""
    for op in ops:
        path = str(op.get("path", ""))
        match = re.fullmatch(r"/webhooks/(\d+|-)", path)
        if op.get("op") not in ("replace", "add") or match is None:
            raise LwsManifestError(
                f"{source}: unsupported patch op {op.get('op')!r} on {path!r} (only replace/add "
                "of /webhooks/<index>)"
            )
        webhooks = document.setdefault("webhooks", [])
        index = match.group(1)
        if op["op"] == "add":
            webhooks.insert(len(webhooks) if index == "-" else int(index), op["value"])
        elif index == "-" or int(index) >= len(webhooks):
            raise LwsManifestError(f"{source}: {path} does not exist in {document['kind']}")
        else:
            webhooks[int(index)] = op["value"]


def webhook_configurations(
    webhook_dir: Path, base_url: str, ca_bundle: bytes
) -> list[dict[str, Any]]:
    """LWS's Mutating/ValidatingWebhookConfigurations, patched as ``config/webhook`` patches
    them, named as ``config/default`` names them, calling ``base_url`` + each webhook's path.

    ``webhook_dir``: a copy of the module's ``config/webhook`` (``manifests.yaml``,
    ``mutating-patch.yaml``, ``validating-patch.yaml``). ``ca_bundle``: PEM of the CA that
    signed the webhook server's certificate.
    """
    manifests = webhook_dir / "manifests.yaml"
    documents = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    patches = {
        "MutatingWebhookConfiguration": webhook_dir / "mutating-patch.yaml",
        "ValidatingWebhookConfiguration": webhook_dir / "validating-patch.yaml",
    }
    bundle = base64.b64encode(ca_bundle).decode()
    result: list[dict[str, Any]] = []
    for original in documents:
        document = copy.deepcopy(original)
        kind = document.get("kind")
        if kind not in patches:
            raise LwsManifestError(f"{manifests}: unexpected kind {kind!r}")
        _apply_ops(document, yaml.safe_load(patches[kind].read_text()) or [], str(patches[kind]))
        document["metadata"]["name"] = NAME_PREFIX + document["metadata"]["name"]
        for webhook in document.get("webhooks") or []:
            service = (webhook.get("clientConfig") or {}).get("service") or {}
            path = service.get("path")
            if not path:
                raise LwsManifestError(
                    f"{manifests}: webhook {webhook.get('name')!r} has no clientConfig.service.path"
                )
            webhook["clientConfig"] = {"url": base_url.rstrip("/") + path, "caBundle": bundle}
        result.append(document)
    kinds = sorted(d["kind"] for d in result)
    if kinds != sorted(patches):
        raise LwsManifestError(f"{manifests}: expected one of each of {sorted(patches)}: {kinds}")
    return result


def crd_files(config_dir: Path) -> list[Path]:
    return [config_dir / "crd" / "bases" / name for name in CRD_FILES]


@dataclass(frozen=True)
class ManagerPorts:
    """The manager's listeners (on ``host``, which the caller checks is loopback)."""

    webhook: int
    metrics: int
    health: int


def manager_configuration(ports: ManagerPorts, cert_dir: Path, host: str) -> dict[str, Any]:
    """The manager's ``config.lws.x-k8s.io/v1alpha1`` Configuration (``--config``)."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        # Off: certificates come from the cluster's PKI; nothing else runs a manager.
        "internalCertManagement": {"enable": False},
        "leaderElection": {"leaderElect": False},
        "webhook": {"host": host, "port": ports.webhook, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": f"{host}:{ports.metrics}"},
        "health": {"healthProbeBindAddress": f"{host}:{ports.health}"},
    }


def dry_run_object(namespace: str = "default") -> dict[str, Any]:
    """A minimal LeaderWorkerSet to create with ``dryRun=All``: passes both LWS webhooks."""
    container = {"name": "c", "image": "registry.invalid/none:0"}
    return {
        "apiVersion": API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "localcluster-webhook-probe", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"spec": {"containers": [container]}},
            },
        },
    }


# -- pods of a group, for the process runner ---------------------------------------------------


@dataclass(frozen=True)
class GroupKey:
    namespace: str
    lws: str
    group: str


def group_of(pod: Mapping[str, Any]) -> tuple[GroupKey, str] | None:
    """(the pod's LWS group, its worker index), or None for a pod of no LWS group."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    name, group = labels.get(NAME_LABEL), labels.get(GROUP_INDEX_LABEL)
    worker = labels.get(WORKER_INDEX_LABEL)
    if not name or group is None or worker is None:
        return None
    return GroupKey(str(meta.get("namespace", "")), str(name), str(group)), str(worker)


def leader_ips(pods: Iterable[Mapping[str, Any]]) -> dict[GroupKey, str]:
    """The podIP of each group's leader (worker index 0) that has one and is not terminating."""
    found: dict[GroupKey, str] = {}
    for pod in pods:
        member = group_of(pod)
        ip = (pod.get("status") or {}).get("podIP")
        deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
        if member is not None and member[1] == "0" and ip and not deleting:
            found[member[0]] = str(ip)
    return found
