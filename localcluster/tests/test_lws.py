"""LeaderWorkerSet's pure parts: its webhook configurations rewritten for loopback, the
manager's configuration, groups and leaders of pods, and what the runner makes of LWS pods."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import build, lws
from localcluster.runner import container_env, expand, field_value, pod_targets

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BASE = "https://127.0.0.1:9443"


def _webhook(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {
        "admissionReviewVersions": ["v1"],
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "failurePolicy": "Fail",
        "name": name,
        "sideEffects": "None",
        **extra,
    }


POD_SELECTOR = {"matchExpressions": [{"key": lws.NAME_LABEL, "operator": "Exists"}]}


def write_webhook_dir(directory: Path) -> Path:
    """The shape of LWS v0.9.0's config/webhook: manifests plus kustomize JSON6902 patches."""
    directory.mkdir(parents=True, exist_ok=True)
    mutating: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _webhook("mleaderworkerset.kb.io", lws.MUTATING_PATH),
            _webhook("mpod.kb.io", "/mutate--v1-pod"),
        ],
    }
    validating = copy.deepcopy(mutating)
    validating["kind"] = "ValidatingWebhookConfiguration"
    validating["metadata"]["name"] = "validating-webhook-configuration"
    validating["webhooks"] = [
        _webhook("vleaderworkerset.kb.io", "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset"),
        _webhook("vpod.kb.io", "/validate--v1-pod"),
    ]
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all([mutating, validating]))
    for kind, name, path in (
        ("mutating", "mpod.kb.io", "/mutate--v1-pod"),
        ("validating", "vpod.kb.io", "/validate--v1-pod"),
    ):
        patched = _webhook(name, path, objectSelector=POD_SELECTOR)
        ops = [{"op": "replace", "path": "/webhooks/1", "value": patched}]
        (directory / f"{kind}-patch.yaml").write_text(yaml.safe_dump(ops))
    return directory


def test_webhook_configurations_call_loopback_with_the_cluster_ca(tmp_path: Path) -> None:
    configs = lws.webhook_configurations(write_webhook_dir(tmp_path / "webhook"), BASE, CA)
    by_kind = {c["kind"]: c for c in configs}
    assert by_kind["MutatingWebhookConfiguration"]["metadata"]["name"] == (
        "lws-mutating-webhook-configuration"
    )
    assert by_kind["ValidatingWebhookConfiguration"]["metadata"]["name"] == (
        "lws-validating-webhook-configuration"
    )
    urls = {w["name"]: w["clientConfig"] for c in configs for w in c["webhooks"]}
    assert urls["mleaderworkerset.kb.io"] == {
        "url": f"{BASE}{lws.MUTATING_PATH}",
        "caBundle": base64.b64encode(CA).decode(),
    }
    assert urls["vpod.kb.io"]["url"] == f"{BASE}/validate--v1-pod"
    # The kustomize patches applied: the pod webhooks only see pods of an LWS.
    pod_hooks = [
        w for c in configs for w in c["webhooks"] if w["name"] in ("mpod.kb.io", "vpod.kb.io")
    ]
    assert [w["objectSelector"] for w in pod_hooks] == [POD_SELECTOR, POD_SELECTOR]
    assert all("service" not in w["clientConfig"] for c in configs for w in c["webhooks"])


def test_webhook_configurations_refuse_an_unknown_patch(tmp_path: Path) -> None:
    directory = write_webhook_dir(tmp_path / "webhook")
    ops = [{"op": "remove", "path": "/webhooks/0"}]
    (directory / "mutating-patch.yaml").write_text(yaml.safe_dump(ops))
    with pytest.raises(lws.LwsManifestError, match="unsupported patch op 'remove'"):
        lws.webhook_configurations(directory, BASE, CA)


def test_webhook_configurations_refuse_a_patch_past_the_end(tmp_path: Path) -> None:
    directory = write_webhook_dir(tmp_path / "webhook")
    ops = [{"op": "replace", "path": "/webhooks/5", "value": {}}]
    (directory / "validating-patch.yaml").write_text(yaml.safe_dump(ops))
    with pytest.raises(lws.LwsManifestError, match="/webhooks/5 does not exist"):
        lws.webhook_configurations(directory, BASE, CA)


def test_manager_configuration_is_loopback_without_cert_management_or_election() -> None:
    ports = lws.ManagerPorts(webhook=1001, metrics=1002, health=1003)
    config = lws.manager_configuration(ports, Path("/certs"), "127.0.0.1")
    assert config["kind"] == "Configuration"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1001, "certDir": "/certs"}
    assert config["metrics"]["bindAddress"] == "127.0.0.1:1002"
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:1003"


def test_lws_component_is_built_only_with_its_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANTRY_CACHE", str(tmp_path))
    binary = build.LWS.path("lws-controller-manager")
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert not build.LWS.built()
    for relative in build.LWS_MANIFESTS:
        (build.LWS.directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (build.LWS.directory / relative).write_text("")
    assert build.LWS.built()
    assert [p.name for p in lws.crd_files(build.LWS.directory / "config")] == list(lws.CRD_FILES)
    assert all(p.is_file() for p in lws.crd_files(build.LWS.directory / "config"))


# -- pods ----------------------------------------------------------------------------------


NODE = "h100-test"
NS = "ns"


def lws_pod(
    name: str,
    worker: str,
    ip: str | None,
    *,
    group: str = "0",
    lws_name: str = "bed",
    **status: Any,
) -> dict[str, Any]:
    env = [
        {"name": lws.LEADER_ADDRESS_ENV, "value": f"{lws_name}-{group}.{lws_name}.{NS}"},
        {"name": lws.GROUP_SIZE_ENV, "value": "2"},
        {"name": lws.WORKER_INDEX_ENV, "value": worker},
        {"name": "MASTER", "value": f"$({lws.LEADER_ADDRESS_ENV}):29500"},
    ]
    return {
        "metadata": {
            "uid": f"uid-{name}",
            "namespace": NS,
            "name": name,
            "labels": {
                lws.NAME_LABEL: lws_name,
                lws.GROUP_INDEX_LABEL: group,
                lws.WORKER_INDEX_LABEL: worker,
            },
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "runtime", "env": env}]},
        "status": {"phase": "Running", "podIP": ip, **status},
    }


def targets(*pods: dict[str, Any]) -> dict[str, Any]:
    return {t.name: t for t in pod_targets(pods, {NODE}, max_grace=10).values()}


def test_group_members_get_their_leaders_ip_for_the_leader_address() -> None:
    found = targets(lws_pod("bed-0", "0", "127.1.1.0"), lws_pod("bed-0-1", "1", "127.1.2.0"))
    for name in ("bed-0", "bed-0-1"):
        env = dict(found[name].env)
        assert env[lws.LEADER_ADDRESS_ENV] == "127.1.1.0"
        assert env["MASTER"] == "127.1.1.0:29500"  # references expand after the substitution
        assert found[name].notes == (
            f"{lws.LEADER_ADDRESS_ENV}: bed-0.bed.{NS} -> 127.1.1.0 (the leader pod's IP: no "
            "DNS here; see localcluster/lws.py RUNNER_SUBSTITUTIONS)",
        )
    assert dict(found["bed-0-1"].env)[lws.WORKER_INDEX_ENV] == "1"
    assert list(dict(found["bed-0"].env))[:3] == list(lws.INJECTED_ENV)  # order kept


def test_a_worker_waits_for_its_leaders_ip() -> None:
    worker = lws_pod("bed-0-1", "1", "127.1.2.0")
    assert targets(worker) == {}
    assert set(targets(worker, lws_pod("bed-0", "0", None))) == set()
    leaving = lws_pod("bed-0", "0", "127.1.1.0")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert set(targets(worker, leaving)) == set()


def test_groups_are_told_apart_by_lws_group_and_namespace() -> None:
    found = targets(
        lws_pod("bed-0", "0", "127.1.1.0"),
        lws_pod("bed-1", "0", "127.1.3.0", group="1"),
        lws_pod("bed-1-1", "1", "127.1.4.0", group="1"),
        lws_pod("other-0", "0", "127.1.5.0", lws_name="other"),
    )
    assert dict(found["bed-1-1"].env)[lws.LEADER_ADDRESS_ENV] == "127.1.3.0"
    assert dict(found["other-0"].env)[lws.LEADER_ADDRESS_ENV] == "127.1.5.0"
    member = lws_pod("x", "1", None)
    assert lws.group_of(member) == (lws.GroupKey(NS, "bed", "0"), "1")
    del member["metadata"]["labels"][lws.WORKER_INDEX_LABEL]
    assert lws.group_of(member) is None


def test_a_pod_outside_any_group_keeps_its_env_as_written() -> None:
    pod = lws_pod("plain", "0", "127.1.1.0")
    pod["metadata"]["labels"] = {}
    env = dict(targets(pod)["plain"].env)
    assert env[lws.LEADER_ADDRESS_ENV] == f"bed-0.bed.{NS}"
    assert targets(pod)["plain"].notes == ()


def test_readiness_probe_is_recorded() -> None:
    pod = lws_pod("bed-0", "0", "127.1.1.0")
    assert targets(pod)["bed-0"].readiness_probe is False
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/health", "port": 8000}}
    assert targets(pod)["bed-0"].readiness_probe is True


def test_expand_follows_the_kubelet() -> None:
    defined = {"A": "1", "B": "x"}
    assert expand("$(A)-$(B)", defined) == "1-x"
    assert expand("$(C)", defined) == "$(C)"  # undefined: as written
    assert expand("$$(A)", defined) == "$(A)"  # escaped
    assert expand("$$", defined) == "$"
    assert expand("$(A", defined) == "$(A"  # unterminated
    assert expand("a$b", defined) == "a$b"


def test_field_refs_resolve_from_the_pod() -> None:
    pod = lws_pod("bed-0", "0", "127.1.1.0", hostIP="127.2.0.1")
    pod["metadata"]["annotations"] = {lws.SIZE_ANNOTATION: "2"}
    assert field_value(pod, "metadata.name") == "bed-0"
    assert field_value(pod, "metadata.namespace") == NS
    assert field_value(pod, "status.podIP") == "127.1.1.0"
    assert field_value(pod, "status.hostIP") == "127.2.0.1"
    assert field_value(pod, "spec.nodeName") == NODE
    assert field_value(pod, f"metadata.labels['{lws.WORKER_INDEX_LABEL}']") == "0"
    assert field_value(pod, f"metadata.annotations['{lws.SIZE_ANNOTATION}']") == "2"
    assert field_value(pod, "metadata.labels['absent']") == ""
    assert field_value(pod, "spec.unknown") is None


def test_container_env_resolves_field_refs_and_skips_other_sources() -> None:
    pod = lws_pod("bed-0", "0", "127.1.1.0")
    container = {
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "URL", "value": "http://$(POD):8000"},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "LATER", "value": "$(NEXT)"},  # defined after: left as written
            {"name": "NEXT", "value": "n"},
        ]
    }
    env = dict(container_env(pod, container, {}))
    assert env == {"POD": "bed-0", "URL": "http://bed-0:8000", "LATER": "$(NEXT)", "NEXT": "n"}
