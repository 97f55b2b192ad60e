//! Bad input never crashes anything and never stores anything: each refused request gets
//! the right code and a Status a person can act on, and the store's revision stays put.

#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use serde_json::{Value, json};

#[derive(Clone, Copy)]
enum Tok {
    Admin,
    /// A node credential (of node `n1`), from joining.
    Node,
    /// The join token itself.
    Join,
    Wrong,
    Missing,
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    token: Tok,
    code: u16,
    message: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Value,
    code: u16,
    message: &'static str,
) -> Case {
    Case {
        what,
        method,
        path,
        content_type: "application/json",
        body: serde_json::to_vec(&body).unwrap(),
        token: Tok::Admin,
        code,
        message,
    }
}

fn raw(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    ct: &'static str,
    body: &[u8],
    code: u16,
    message: &'static str,
) -> Case {
    Case {
        what,
        method,
        path,
        content_type: ct,
        body: body.to_vec(),
        token: Tok::Admin,
        code,
        message,
    }
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn container() -> Value {
    json!({"name": "c", "image": "registry.local/app:1"})
}

fn with_container(extra: Value) -> Value {
    let mut c = container();
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    json!({"containers": [c]})
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn deployment(selector: &str, label: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": selector}},
        "template": {"metadata": {"labels": {"app": label}}, "spec": {"containers": [container()]}}}})
}

fn cases(existing_pod_rv: &str) -> Vec<Case> {
    let mut stale = pod("existing", json!({"containers": [container()]}));
    stale["metadata"]["resourceVersion"] = json!("1");
    let mut immutable = pod(
        "existing",
        json!({"containers": [container()], "restartPolicy": "Never"}),
    );
    immutable["metadata"]["resourceVersion"] = json!(existing_pod_rv);
    let big = vec![b' '; 4 * 1024 * 1024];
    vec![
        raw(
            "undecodable JSON",
            "POST",
            PODS,
            "application/json",
            b"{\"apiVersion\":",
            400,
            "could not be decoded as JSON",
        ),
        raw(
            "undecodable YAML",
            "POST",
            PODS,
            "application/yaml",
            b"kind: [unclosed\n  - : :",
            400,
            "could not be decoded as YAML",
        ),
        raw(
            "a list instead of an object",
            "POST",
            PODS,
            "application/json",
            b"[]",
            400,
            "must be a JSON or YAML object",
        ),
        raw(
            "an unknown media type",
            "POST",
            PODS,
            "text/plain",
            b"hello",
            415,
            "unknown format",
        ),
        case(
            "a string where a number belongs",
            "POST",
            PODS,
            pod(
                "p",
                with_container(json!({"ports": [{"containerPort": "eighty"}]})),
            ),
            400,
            "spec.containers[0].ports[0].containerPort",
        ),
        case(
            "a name with capitals",
            "POST",
            PODS,
            pod("Bad_Name", json!({"containers": [container()]})),
            422,
            "metadata.name: Invalid value: \"Bad_Name\"",
        ),
        case(
            "a name too long",
            "POST",
            PODS,
            pod(&"a".repeat(300), json!({"containers": [container()]})),
            422,
            "must be no more than 253 characters",
        ),
        case(
            "no containers",
            "POST",
            PODS,
            pod("p", json!({"containers": []})),
            422,
            "spec.containers: Required value",
        ),
        case(
            "no image",
            "POST",
            PODS,
            pod("p", json!({"containers": [{"name": "c"}]})),
            422,
            "spec.containers[0].image: Required value",
        ),
        case(
            "a bad label value",
            "POST",
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "-x"}}, "spec": {"containers": [container()]}}),
            422,
            "metadata.labels[app]",
        ),
        case(
            "a bad label key",
            "POST",
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a b": "x"}}, "spec": {"containers": [container()]}}),
            422,
            "metadata.labels: Invalid value: \"a b\"",
        ),
        case(
            "a bad CPU quantity",
            "POST",
            PODS,
            pod(
                "p",
                with_container(json!({"resources": {"limits": {"cpu": "2 cores"}}})),
            ),
            422,
            "quantities must match the regular expression",
        ),
        case(
            "a bad memory quantity",
            "POST",
            PODS,
            pod(
                "p",
                with_container(json!({"resources": {"requests": {"memory": "64MB"}}})),
            ),
            422,
            "resources.requests[memory]: Invalid value: \"64MB\"",
        ),
        case(
            "requests above limits",
            "POST",
            PODS,
            pod(
                "p",
                with_container(
                    json!({"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}}),
                ),
            ),
            422,
            "must be less than or equal to cpu limit of 1",
        ),
        case(
            "duplicate container names",
            "POST",
            PODS,
            pod("p", json!({"containers": [container(), container()]})),
            422,
            "spec.containers[1].name: Duplicate value: \"c\"",
        ),
        case(
            "a port out of range",
            "POST",
            PODS,
            pod(
                "p",
                with_container(json!({"ports": [{"containerPort": 70000}]})),
            ),
            422,
            "must be between 1 and 65535, inclusive",
        ),
        case(
            "an unsupported restart policy",
            "POST",
            PODS,
            pod(
                "p",
                json!({"containers": [container()], "restartPolicy": "Sometimes"}),
            ),
            422,
            "spec.restartPolicy: Unsupported value: \"Sometimes\"",
        ),
        case(
            "an unknown field, strictly",
            "POST",
            "/api/v1/namespaces/default/pods?fieldValidation=Strict",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container()], "colour": "blue"}}),
            400,
            "unknown field \"spec.colour\"",
        ),
        case(
            "a Service sent to pods",
            "POST",
            PODS,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "p"}}),
            400,
            "does not match the kind of the request",
        ),
        case(
            "the wrong apiVersion",
            "POST",
            PODS,
            json!({"apiVersion": "apps/v1", "kind": "Pod", "metadata": {"name": "p"}}),
            400,
            "does not match the expected API version",
        ),
        case(
            "no kind",
            "POST",
            PODS,
            json!({"apiVersion": "v1", "metadata": {"name": "p"}}),
            400,
            "Object 'Kind' is missing",
        ),
        case(
            "a namespace that does not exist",
            "POST",
            "/api/v1/namespaces/nope/pods",
            pod("p", json!({"containers": [container()]})),
            404,
            "namespaces \"nope\" not found",
        ),
        case(
            "a namespace differing from the URL",
            "POST",
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "kube-system"}, "spec": {"containers": [container()]}}),
            400,
            "does not match the namespace sent on the request",
        ),
        raw(
            "a body over the size limit",
            "POST",
            PODS,
            "application/json",
            &big,
            413,
            "Request entity too large",
        ),
        case(
            "a kind Skiff does not serve",
            "GET",
            "/apis/apps/v1/namespaces/default/statefulsets",
            Value::Null,
            404,
            "could not find the requested resource",
        ),
        case(
            "a group Skiff does not serve",
            "GET",
            "/apis/example.com/v1/widgets",
            Value::Null,
            404,
            "could not find the requested resource",
        ),
        case(
            "a subresource Skiff does not serve",
            "GET",
            "/api/v1/namespaces/default/pods/existing/ephemeralcontainers",
            Value::Null,
            404,
            "could not find the requested resource",
        ),
        case(
            "exec without a connection upgrade",
            "GET",
            "/api/v1/namespaces/default/pods/existing/exec?command=true",
            Value::Null,
            400,
            "an exec takes a connection upgrade (WebSocket or SPDY/3.1)",
        ),
        Case {
            token: Tok::Missing,
            ..case(
                "no token",
                "POST",
                PODS,
                pod("p", json!({"containers": [container()]})),
                401,
                "Unauthorized",
            )
        },
        Case {
            token: Tok::Wrong,
            ..case(
                "a wrong token",
                "POST",
                PODS,
                pod("p", json!({"containers": [container()]})),
                401,
                "Unauthorized",
            )
        },
        Case {
            token: Tok::Node,
            ..case(
                "a node creating a config map",
                "POST",
                "/api/v1/namespaces/default/configmaps",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
                403,
                "cannot create resource \"configmaps\"",
            )
        },
        Case {
            token: Tok::Join,
            ..case(
                "the join token used to list pods",
                "GET",
                "/api/v1/namespaces/default/pods",
                Value::Null,
                403,
                "only allows joining",
            )
        },
        Case {
            token: Tok::Node,
            ..case(
                "a node patching another node",
                "PATCH",
                "/api/v1/nodes/n2",
                json!({"metadata": {"labels": {"a": "b"}}}),
                403,
                "nodes \"n2\" is forbidden: User \"system:node:n1\" cannot patch resource \"nodes\"",
            )
        },
        Case {
            token: Tok::Node,
            ..case(
                "a node reading secrets in bulk",
                "GET",
                "/api/v1/namespaces/default/secrets",
                Value::Null,
                403,
                "cannot list resource \"secrets\"",
            )
        },
        case(
            "a name that exists",
            "POST",
            PODS,
            pod("existing", json!({"containers": [container()]})),
            409,
            "pods \"existing\" already exists",
        ),
        case(
            "a stale resourceVersion",
            "PUT",
            "/api/v1/namespaces/default/pods/existing",
            stale,
            409,
            "the object has been modified",
        ),
        case(
            "a change to an immutable pod field",
            "PUT",
            "/api/v1/namespaces/default/pods/existing",
            immutable,
            422,
            "spec: Forbidden: pod updates may not change fields",
        ),
        case(
            "a selector that misses the template",
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            deployment("a", "b"),
            422,
            "`selector` does not match template `labels`",
        ),
        raw(
            "a patch of an unknown media type",
            "PATCH",
            "/api/v1/namespaces/default/pods/existing",
            "text/plain",
            b"{}",
            415,
            "unknown format",
        ),
        raw(
            "a server-side apply patch",
            "PATCH",
            "/api/v1/namespaces/default/pods/existing",
            "application/apply-patch+yaml",
            b"{}",
            415,
            "server-side apply is not implemented",
        ),
        raw(
            "a JSON patch on a missing path",
            "PATCH",
            "/api/v1/namespaces/default/pods/existing",
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/spec/nope"}]"#,
            422,
            "could not be applied",
        ),
        raw(
            "a patch that breaks a type",
            "PATCH",
            "/api/v1/namespaces/default/pods/existing",
            "application/merge-patch+json",
            br#"{"spec":{"containers":"none"}}"#,
            400,
            "cannot be handled as a Pod",
        ),
        case(
            "a service port out of range",
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}]}}),
            422,
            "spec.ports[0].port",
        ),
        case(
            "a session affinity Kubernetes does not have",
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}], "sessionAffinity": "Sticky"}}),
            422,
            "spec.sessionAffinity: Unsupported value: \"Sticky\"",
        ),
        case(
            "a ClientIP affinity timeout past a day",
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}}),
            422,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401",
        ),
        case(
            "a namespace name with capitals",
            "POST",
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "UPPER"}}),
            422,
            "a lowercase RFC 1123 label",
        ),
        case(
            "a config map key with a space",
            "POST",
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"bad key": "v"}}),
            422,
            "a valid config key",
        ),
        case(
            "secret data that is not base64",
            "POST",
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "%%%"}}),
            400,
            "cannot be handled as a Secret",
        ),
        case(
            "deleting what is not there",
            "DELETE",
            "/api/v1/namespaces/default/pods/ghost",
            Value::Null,
            404,
            "pods \"ghost\" not found",
        ),
        case(
            "PUT on a collection",
            "PUT",
            PODS,
            Value::Null,
            405,
            "does not allow this method",
        ),
        case(
            "an unparsable label selector",
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=a%20b%20c",
            Value::Null,
            400,
            "unable to parse requirement",
        ),
        case(
            "an unsupported field selector",
            "GET",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.colour%3Dblue",
            Value::Null,
            400,
            "field label not supported: spec.colour",
        ),
        case(
            "a negative limit",
            "GET",
            "/api/v1/namespaces/default/pods?limit=-1",
            Value::Null,
            400,
            "invalid value for limit",
        ),
        case(
            "a garbled continue token",
            "GET",
            "/api/v1/namespaces/default/pods?limit=1&continue=zzz",
            Value::Null,
            400,
            "invalid continue token",
        ),
        case(
            "a watch from a future revision",
            "GET",
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion=abc",
            Value::Null,
            400,
            "invalid resource version",
        ),
    ]
}

async fn revision(s: &Server, http: &reqwest::Client, token: &str) -> String {
    let v: Value = http
        .get(s.url("/api/v1/namespaces?limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn bad_requests_get_clear_statuses_and_store_nothing() {
    let s = Server::start();
    let http = s.http();
    let admin = s.token();
    let join = s.node_token();
    let node = skiff_api::client::join(&s.url(""), &join, "n1")
        .await
        .unwrap()
        .token;
    let created: Value = http
        .post(s.url(PODS))
        .bearer_auth(&admin)
        .json(&pod("existing", json!({"containers": [container()]})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let table = cases(&rv);
    assert!(table.len() >= 30);
    let mut failures = Vec::new();
    for c in table {
        let before = revision(&s, &http, &admin).await;
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
        let mut req = http
            .request(method, s.url(c.path))
            .header("content-type", c.content_type);
        if c.body != b"null" {
            req = req.body(c.body.clone());
        }
        req = match c.token {
            Tok::Admin => req.bearer_auth(&admin),
            Tok::Node => req.bearer_auth(&node),
            Tok::Join => req.bearer_auth(&join),
            Tok::Wrong => req.bearer_auth("not-the-token"),
            Tok::Missing => req,
        };
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let ok = code == c.code
            && ct.starts_with("application/json")
            && body["kind"] == "Status"
            && body["code"] == c.code
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains(c.message));
        if !ok {
            failures.push(format!(
                "{}: want {} {:?}, got {code} {body}",
                c.what, c.code, c.message
            ));
        }
        let after = revision(&s, &http, &admin).await;
        if before != after {
            failures.push(format!(
                "{}: the store changed ({before} -> {after})",
                c.what
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Still serving, and the one good object is intact.
    let got = http
        .get(s.url("/api/v1/namespaces/default/pods/existing"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let list: Value = http
        .get(s.url(PODS))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}
