"""deploy/k8s: manifests that parse, fit together, and run the fleet as designed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import K8S

TEMPLATE = "secret.example.yaml"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources(kustomization) -> list[dict[str, Any]]:
    docs = []
    for name in kustomization["resources"]:
        docs += _documents(K8S / name)
    return docs


@pytest.fixture(scope="module")
def secret_template() -> dict[str, Any]:
    (secret,) = _documents(K8S / TEMPLATE)
    return secret


def _one(resources, kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(container) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _pod_specs(resources):
    for r in resources:
        if r["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield r["metadata"]["name"], r["spec"]["template"]["spec"]


def test_every_manifest_parses_and_names_its_kind():
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _documents(path):
            assert doc.get("apiVersion") and doc.get("kind"), path.name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path.name


def test_manifests_are_namespace_agnostic(kustomization):
    assert "namespace" not in kustomization
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _documents(path):
            assert "namespace" not in doc.get("metadata", {}), f"{path.name} pins a namespace"


def test_kustomization_lists_existing_files_and_every_manifest_but_the_template(kustomization):
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization lists missing {name}"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", TEMPLATE}
    assert set(listed) == on_disk
    assert TEMPLATE not in listed, "the Secret template must never be applied as is"


def test_every_container_image_can_be_set_through_kustomize(kustomization, resources):
    managed = {i["name"] for i in kustomization["images"]}
    for name, pod in _pod_specs(resources):
        for container in pod["containers"]:
            assert container["image"] in managed, f"{name} uses unmanaged {container['image']}"


def test_every_secret_reference_names_a_key_of_the_template(resources, secret_template):
    keys = set(secret_template["stringData"])
    used = set()
    for name, pod in _pod_specs(resources):
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret_template["metadata"]["name"], name
                    assert ref["key"] in keys, f"{name} reads missing key {ref['key']}"
                    used.add(ref["key"])
    assert used == keys, f"template keys nobody reads: {keys - used}"


def test_secret_template_holds_placeholders_only(secret_template):
    for key, value in secret_template["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} looks like a real secret"


def test_no_secret_value_is_written_into_a_workload(resources):
    for name, pod in _pod_specs(resources):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if any(w in env["name"] for w in ("TOKEN", "SECRET", "PASSWORD", "DATABASE_URL")):
                    assert "value" not in env, f"{name} sets {env['name']} literally"


def test_worker_holds_one_gpu_per_pod(resources):
    worker = _container(_one(resources, "Deployment", "tunefleet-worker"))
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][worker["args"].index("--device") + 1] == "cuda:0"


def test_worker_takes_its_token_from_the_secret_in_its_environment_not_argv(resources):
    worker = _container(_one(resources, "Deployment", "tunefleet-worker"))
    assert "--token" not in worker["args"]
    assert not any("TOKEN" in arg for arg in worker["args"])
    ref = _env(worker)["TUNEFLEET_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "worker-token"


def test_worker_reaches_the_api_through_its_service(resources):
    worker = _container(_one(resources, "Deployment", "tunefleet-worker"))
    service = _one(resources, "Service", "tunefleet-api")
    url = worker["args"][worker["args"].index("--service") + 1]
    assert url == f"http://tunefleet-api:{service['spec']['ports'][0]['port']}"


def test_worker_may_finish_its_trial_after_sigterm(resources):
    from tunefleet.spec import Budget

    pod = _one(resources, "Deployment", "tunefleet-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > Budget.model_fields["trial_timeout_s"].default


def test_worker_rollout_never_waits_for_a_gpu_that_is_not_there(resources):
    strategy = _one(resources, "Deployment", "tunefleet-worker")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def test_api_has_readiness_on_readyz_and_liveness_on_healthz(resources):
    api = _container(_one(resources, "Deployment", "tunefleet-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]


def test_every_container_states_its_resources(resources):
    for name, pod in _pod_specs(resources):
        for container in pod["containers"]:
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"].get("memory"), name


def test_every_pod_runs_as_non_root(resources):
    for name, pod in _pod_specs(resources):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name


def test_migrate_job_migrates_then_registers_the_worker_token(resources):
    job = _one(resources, "Job", "tunefleet-migrate")
    container = _container(job)
    script = " ".join(container["command"] + container["args"])
    assert script.startswith("/bin/sh -c tunefleet migrate &&")
    # The token comes from the environment: on the command line `ps` would show it.
    assert "token create --scope worker --owner fleet --value-env TUNEFLEET_WORKER_TOKEN" in script
    assert "$TUNEFLEET_WORKER_TOKEN" not in script
    assert _env(container)["TUNEFLEET_WORKER_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == (
        "worker-token"
    )
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}


@pytest.mark.parametrize("component", ["api", "dashboard"])
def test_services_select_their_pods_and_ports(resources, component):
    service = _one(resources, "Service", f"tunefleet-{component}")
    deployment = _one(resources, "Deployment", f"tunefleet-{component}")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in _container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_dashboard_is_reachable_inside_the_cluster_only(resources):
    service = _one(resources, "Service", "tunefleet-dashboard")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    dashboard = _container(_one(resources, "Deployment", "tunefleet-dashboard"))
    assert _env(dashboard)["DASHBOARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == (
        "dashboard-database-url"
    )


def test_artifact_volume_is_shared_between_api_and_workers(resources):
    claim = _one(resources, "PersistentVolumeClaim", "tunefleet-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("tunefleet-api", "tunefleet-worker"):
        pod = _one(resources, "Deployment", name)["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        container = pod["containers"][0]
        artifact_dir = _env(container)["TUNEFLEET_ARTIFACT_DIR"]["value"]
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims[mounted[artifact_dir]] == "tunefleet-artifacts", name


def test_kustomize_renders_every_resource_with_tagged_images(resources):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the checks above cover the manifests one by one")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (r["kind"], r["metadata"]["name"]) for r in resources
    )
    for name, pod in _pod_specs(docs):
        for container in pod["containers"]:
            assert ":" in container["image"], f"{name} runs an untagged image"
