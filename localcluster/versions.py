"""Every version of the local control plane, pinned in one place.

The build cache is keyed by these values: change one and the next run rebuilds only that
component.
"""

from __future__ import annotations

KUBERNETES = "v1.34.4"
#: Staging modules carry the same minor/patch under the v0 major.
KUBERNETES_STAGING = "v0.34.4"
ETCD = "v3.6.16"
KWOK = "v0.7.0"
HELM = "v3.19.5"
#: The manifest security scanner run on the rendered Helm chart (github.com/zegl/kube-score).
KUBE_SCORE = "v1.20.0"
#: LeaderWorkerSet's controller manager (sigs.k8s.io/lws), run by a LocalCluster on request.
LWS = "v0.9.0"

#: Staging modules of k8s.io/kubernetes that the wrapper module replaces.
STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
)

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
