"""The official Python `kubernetes` client against a Skiff server: create, list,
patch and watch pods. Usage: client_check.py KUBECONFIG"""

import sys

from kubernetes import client, config, watch


def main(kubeconfig: str) -> None:
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "py-pod", "labels": {"from": "python"}},
        "spec": {"runtimeClassName": "wasm", "containers": [{"name": "c", "image": "registry.local/app:1"}]},
    }
    created = v1.create_namespaced_pod("default", pod)
    assert created.metadata.uid, "server assigns a uid"
    assert created.status.phase == "Pending", created.status

    pods = v1.list_namespaced_pod("default", label_selector="from=python")
    assert [p.metadata.name for p in pods.items] == ["py-pod"], pods.items
    rv = pods.metadata.resource_version

    v1.patch_namespaced_pod("py-pod", "default", {"metadata": {"labels": {"patched": "yes"}}})

    w = watch.Watch()
    seen = []
    for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=20):
        obj = ev["object"]
        seen.append((ev["type"], obj.metadata.name, (obj.metadata.labels or {}).get("patched")))
        if ev["type"] == "MODIFIED":
            w.stop()
    assert seen and seen[0] == ("MODIFIED", "py-pod", "yes"), seen

    v1.delete_namespaced_pod("py-pod", "default")
    try:
        v1.read_namespaced_pod("py-pod", "default")
        raise AssertionError("pod still there after delete")
    except client.exceptions.ApiException as e:
        assert e.status == 404, e

    try:
        v1.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad"}, "spec": {"containers": []}})
        raise AssertionError("invalid pod accepted")
    except client.exceptions.ApiException as e:
        assert e.status == 422, e
    print("python client: ok")


if __name__ == "__main__":
    main(sys.argv[1])
