//! RBAC as users meet it: kubeconfigs from `skiff kubeconfig create`, bindings made with
//! `kubectl create rolebinding`, and a table of what each user may do, checked through
//! real kubectl twice, by doing it and by `kubectl auth can-i`; then `auth whoami`,
//! impersonation (`--as`), and the escalation checks that stop a namespace admin from
//! granting more than it holds.

#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct User {
    name: &'static str,
    kubeconfig: PathBuf,
}

fn make_user(s: &Server, dir: &Path, name: &'static str, groups: &[&str]) -> User {
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["kubeconfig", "create", name, "--kubeconfig"])
        .arg(s.kubeconfig())
        .arg("--out")
        .arg(&kubeconfig);
    for g in groups {
        cmd.args(["--group", g]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&kubeconfig).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    User { name, kubeconfig }
}

fn kubectl_as(u: &User, cache: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&u.kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One case: who, what kubectl command, and the `auth can-i` question it amounts to.
struct Case {
    user: usize,
    args: &'static [&'static str],
    can_i: &'static [&'static str],
    allowed: bool,
}

const fn case(
    user: usize,
    args: &'static [&'static str],
    can_i: &'static [&'static str],
    allowed: bool,
) -> Case {
    Case {
        user,
        args,
        can_i,
        allowed,
    }
}

const T: &str = "--namespace=team";
const O: &str = "--namespace=other";
const VERA: usize = 0; // view in team
const ED: usize = 1; // edit in team
const ADA: usize = 2; // admin in team
const GUS: usize = 3; // group auditors: view everywhere
const NORA: usize = 4; // nothing

#[tokio::test]
async fn view_edit_and_admin_bindings_decide_what_kubectl_may_do() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for ns in ["team", "other"] {
        s.kubectl_ok(&["create", "namespace", ns]);
    }
    s.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "configmap",
        "settings",
        "--from-literal=a=1",
    ]);
    s.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=pw=x",
    ]);
    s.kubectl_ok(&[
        "-n",
        "other",
        "create",
        "configmap",
        "theirs",
        "--from-literal=a=1",
    ]);
    let users = [
        make_user(&s, tmp.path(), "vera", &[]),
        make_user(&s, tmp.path(), "ed", &[]),
        make_user(&s, tmp.path(), "ada", &[]),
        make_user(&s, tmp.path(), "gus", &["auditors"]),
        make_user(&s, tmp.path(), "nora", &[]),
    ];
    for (name, role, user) in [
        ("vera-view", "view", "vera"),
        ("ed-edit", "edit", "ed"),
        ("ada-admin", "admin", "ada"),
    ] {
        s.kubectl_ok(&[
            "-n",
            "team",
            "create",
            "rolebinding",
            name,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }
    s.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "auditors-view",
        "--clusterrole=view",
        "--group=auditors",
    ]);

    let cases = [
        case(
            VERA,
            &["get", "configmaps", T],
            &["list", "configmaps", T],
            true,
        ),
        case(
            VERA,
            &["get", "configmap", "settings", T],
            &["get", "configmaps/settings", T],
            true,
        ),
        case(VERA, &["get", "secrets", T], &["list", "secrets", T], false),
        case(
            VERA,
            &["create", "configmap", "v1", "--from-literal=a=b", T],
            &["create", "configmaps", T],
            false,
        ),
        case(
            VERA,
            &["delete", "configmap", "settings", T],
            &["delete", "configmaps", T],
            false,
        ),
        case(
            VERA,
            &["get", "configmaps", O],
            &["list", "configmaps", O],
            false,
        ),
        case(VERA, &["get", "nodes"], &["list", "nodes"], false),
        case(
            ED,
            &["get", "secret", "db", T],
            &["get", "secrets", T],
            true,
        ),
        case(
            ED,
            &["create", "configmap", "e1", "--from-literal=a=b", T],
            &["create", "configmaps", T],
            true,
        ),
        case(
            ED,
            &["delete", "configmap", "e1", T],
            &["delete", "configmaps", T],
            true,
        ),
        case(
            ED,
            &[
                "create",
                "rolebinding",
                "e2",
                "--clusterrole=view",
                "--user=nora",
                T,
            ],
            &["create", "rolebindings.rbac.authorization.k8s.io", T],
            false,
        ),
        case(
            ED,
            &["get", "configmaps", O],
            &["list", "configmaps", O],
            false,
        ),
        case(ED, &["get", "namespaces"], &["list", "namespaces"], false),
        case(ADA, &["get", "secrets", T], &["list", "secrets", T], true),
        case(
            ADA,
            &[
                "create",
                "rolebinding",
                "nora-view",
                "--clusterrole=view",
                "--user=nora",
                T,
            ],
            &["create", "rolebindings.rbac.authorization.k8s.io", T],
            true,
        ),
        case(
            ADA,
            &["delete", "rolebinding", "nora-view", T],
            &["delete", "rolebindings.rbac.authorization.k8s.io", T],
            true,
        ),
        case(
            ADA,
            &["get", "configmaps", O],
            &["list", "configmaps", O],
            false,
        ),
        case(
            ADA,
            &[
                "create",
                "clusterrolebinding",
                "x",
                "--clusterrole=view",
                "--user=ada",
            ],
            &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
            false,
        ),
        case(
            GUS,
            &["get", "configmaps", O],
            &["list", "configmaps", O],
            true,
        ),
        case(
            GUS,
            &["get", "configmaps", "--all-namespaces"],
            &["list", "configmaps", "--all-namespaces"],
            true,
        ),
        case(GUS, &["get", "secrets", T], &["list", "secrets", T], false),
        case(
            GUS,
            &["delete", "configmap", "theirs", O],
            &["delete", "configmaps", O],
            false,
        ),
        case(
            NORA,
            &["get", "configmaps", T],
            &["list", "configmaps", T],
            false,
        ),
        case(NORA, &["get", "pods", O], &["list", "pods", O], false),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for c in &cases {
        let u = &users[c.user];
        let did = kubectl_as(u, &cache, c.args);
        let refused = text(&did).to_lowercase().contains("forbidden");
        if did.status.success() != c.allowed || (!c.allowed && !refused) {
            failures.push(format!(
                "{} kubectl {:?}: want allowed={}, got {}",
                u.name,
                c.args,
                c.allowed,
                text(&did)
            ));
        }
        let mut can_i = vec!["auth", "can-i"];
        can_i.extend_from_slice(c.can_i);
        let asked = kubectl_as(u, &cache, &can_i);
        let answer = String::from_utf8_lossy(&asked.stdout).trim().to_string();
        let want = if c.allowed { "yes" } else { "no" };
        if answer != want {
            failures.push(format!(
                "{} kubectl auth can-i {:?}: want {want}, got {}",
                u.name,
                c.can_i,
                text(&asked)
            ));
        }
        // The admin asking on the user's behalf gets the same answer.
        let user_flag = format!("--as={}", u.name);
        let mut on_behalf = can_i.clone();
        on_behalf.push(&user_flag);
        let group_flag = "--as-group=auditors";
        if c.user == GUS {
            on_behalf.push(group_flag);
        }
        let asked = s.kubectl(&on_behalf);
        let answer = String::from_utf8_lossy(&asked.stdout).trim().to_string();
        if answer != want {
            failures.push(format!(
                "admin kubectl {on_behalf:?}: want {want}, got {}",
                text(&asked)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Kubernetes' words for a refusal.
    let out = kubectl_as(&users[VERA], &cache, &["get", "secrets", T]);
    assert!(
        text(&out).contains(
            "secrets is forbidden: User \"vera\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""
        ),
        "{}",
        text(&out)
    );
    // A namespace admin cannot grant what it does not hold.
    let out = kubectl_as(
        &users[ADA],
        &cache,
        &[
            "create",
            "rolebinding",
            "up",
            "--clusterrole=cluster-admin",
            "--user=ada",
            T,
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("user \"ada\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held"),
        "{}",
        text(&out)
    );
    let role = tmp.path().join("role.yaml");
    std::fs::write(
        &role,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: node-reader, namespace: team}\nrules:\n- {apiGroups: [\"\"], resources: [nodes], verbs: [get]}\n",
    )
    .unwrap();
    let out = kubectl_as(
        &users[ADA],
        &cache,
        &["apply", "-f", role.to_str().unwrap()],
    );
    assert!(
        text(&out).contains("attempting to grant RBAC permissions not currently held"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn whoami_and_impersonation_follow_rbac() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    s.kubectl_ok(&["create", "namespace", "team"]);
    let vera = make_user(&s, tmp.path(), "vera", &["devs"]);
    let ed = make_user(&s, tmp.path(), "ed", &[]);
    s.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "ed-edit",
        "--clusterrole=edit",
        "--user=ed",
    ]);

    let me = kubectl_as(&vera, &cache, &["auth", "whoami"]);
    let out = text(&me);
    assert!(me.status.success(), "{out}");
    assert!(out.contains("Username") && out.contains("vera"), "{out}");
    assert!(out.contains("[devs system:authenticated]"), "{out}");
    let admin = s.kubectl_ok(&["auth", "whoami"]);
    assert!(admin.contains("system:masters"), "{admin}");

    // The admin acts as ed, with ed's rights and no more.
    s.kubectl_ok(&["-n", "team", "get", "secrets", "--as=ed"]);
    let out = s.kubectl(&["get", "nodes", "--as=ed"]);
    assert!(
        text(&out).contains("User \"ed\" cannot list resource \"nodes\""),
        "{}",
        text(&out)
    );
    let who = s.kubectl_ok(&["auth", "whoami", "--as=ed", "--as-group=testers"]);
    assert!(who.contains("[testers system:authenticated]"), "{who}");
    // Vera may not impersonate anyone (kubectl's discovery already fails on that, so
    // read the refusal from the API itself).
    let out = kubectl_as(&vera, &cache, &["-n", "team", "get", "secrets", "--as=ed"]);
    assert!(
        !out.status.success() && text(&out).contains("Forbidden"),
        "{}",
        text(&out)
    );
    let token = std::fs::read_to_string(&vera.kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(String::from))
        .unwrap();
    let resp = s
        .http()
        .get(s.url("/api/v1/namespaces/team/secrets"))
        .bearer_auth(&token)
        .header("Impersonate-User", "ed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        status["message"],
        "users \"ed\" is forbidden: User \"vera\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    // Until a role lets her impersonate ed (and only ed).
    let role = tmp.path().join("imp.yaml");
    std::fs::write(
        &role,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: impersonate-ed}\nrules:\n- {apiGroups: [\"\"], resources: [users], verbs: [impersonate], resourceNames: [ed]}\n",
    )
    .unwrap();
    s.kubectl_ok(&["apply", "-f", role.to_str().unwrap()]);
    s.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "vera-imp",
        "--clusterrole=impersonate-ed",
        "--user=vera",
    ]);
    let out = kubectl_as(&vera, &cache, &["-n", "team", "get", "secrets", "--as=ed"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kubectl_as(
        &vera,
        &cache,
        &["-n", "team", "get", "secrets", "--as=admin-user"],
    );
    assert!(text(&out).contains("cannot impersonate"), "{}", text(&out));
    // A revoked user token is refused at once.
    let secrets = s.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "secrets",
        "-o",
        "name",
        "-l",
        "skiff.dev/user=ed",
    ]);
    let name = secrets.trim();
    assert!(name.starts_with("secret/skiff-user-token-"), "{secrets}");
    s.kubectl_ok(&["-n", "kube-system", "delete", name]);
    let out = kubectl_as(&ed, &cache, &["-n", "team", "get", "configmaps"]);
    assert!(text(&out).contains("Unauthorized"), "{}", text(&out));
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_and_how_it_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit/audit.log");
    let s = Server::start_with(&[
        "--no-scheduler",
        "--no-controllers",
        "--audit-log",
        log.to_str().unwrap(),
    ]);
    let cache = tmp.path().join("cache");
    let vera = make_user(&s, tmp.path(), "vera", &[]);
    s.kubectl_ok(&["create", "configmap", "audited", "--from-literal=a=b"]);
    let out = kubectl_as(&vera, &cache, &["get", "secret", "db"]);
    assert!(text(&out).contains("forbidden"), "{}", text(&out));
    s.kubectl(&["get", "pods", "--as=vera"]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| lines.iter().find(|e| pred(e)).cloned();
    let created = find(&|e| e["verb"] == "create" && e["objectRef"]["resource"] == "configmaps")
        .expect("the configmap create is audited");
    assert_eq!(created["user"]["username"], "skiff:admin");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["sourceIPs"][0], "127.0.0.1");
    assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
    assert!(
        created["userAgent"]
            .as_str()
            .unwrap()
            .starts_with("kubectl"),
        "{created}"
    );
    let refused =
        find(&|e| e["user"]["username"] == "vera" && e["objectRef"]["resource"] == "secrets")
            .expect("vera's refused get is audited");
    assert_eq!(refused["verb"], "get");
    assert_eq!(refused["objectRef"]["name"], "db");
    assert_eq!(refused["responseStatus"]["code"], 403);
    assert_eq!(
        refused["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert!(
        refused["responseStatus"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot get resource"),
        "{refused}"
    );
    let impersonated = find(&|e| {
        e["impersonatedUser"]["username"] == "vera" && e["objectRef"]["resource"] == "pods"
    })
    .expect("the impersonated list is audited");
    assert_eq!(impersonated["user"]["username"], "skiff:admin");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_role_labelled_aggregate_to_edit_extends_edit_and_admin() {
    let s = Server::start_with(&["--no-scheduler"]);
    let tmp = tempfile::tempdir().unwrap();
    let role = tmp.path().join("widgets.yaml");
    std::fs::write(
        &role,
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-edit
  labels: {rbac.authorization.k8s.io/aggregate-to-edit: \"true\"}
rules:
- {apiGroups: [example.com], resources: [widgets], verbs: [get, list, create]}
",
    )
    .unwrap();
    s.kubectl_ok(&["apply", "-f", role.to_str().unwrap()]);
    let has_widgets = |name: &str| {
        let out = s.kubectl_ok(&["get", "clusterrole", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == serde_json::json!(["widgets"]))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(has_widgets("edit") && has_widgets("admin")) {
        assert!(
            std::time::Instant::now() < deadline,
            "edit and admin never got the widget rules"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !has_widgets("view"),
        "view aggregates only aggregate-to-view roles"
    );
    s.kubectl_ok(&[
        "create",
        "rolebinding",
        "ed",
        "--clusterrole=edit",
        "--user=ed",
    ]);
    // (`can-i create widgets.example.com` would ask for a resource of that whole name:
    // kubectl only splits out the group of kinds discovery lists.)
    let rules = s.kubectl_ok(&["auth", "can-i", "--list", "--as=ed"]);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("widgets.example.com") && l.contains("[get list create]")),
        "{rules}"
    );
    // Removing the label takes the rules away again.
    s.kubectl_ok(&[
        "label",
        "clusterrole",
        "widgets-edit",
        "rbac.authorization.k8s.io/aggregate-to-edit-",
    ]);
    while has_widgets("edit") {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(30),
            "edit kept the widget rules"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test]
async fn credentials_are_the_cluster_admins_and_huge_roles_are_refused() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let ed = make_user(&s, tmp.path(), "ed", &[]);
    // Even `admin` in kube-system cannot mint or remove Skiff's credentials.
    s.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "rolebinding",
        "ed-admin",
        "--clusterrole=admin",
        "--user=ed",
    ]);
    let forged = tmp.path().join("forged.yaml");
    std::fs::write(
        &forged,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: mine, namespace: kube-system}\ntype: skiff.dev/user-token\nstringData: {user: mallory, groups: system:masters, token-secret-sha256: x}\n",
    )
    .unwrap();
    let out = kubectl_as(&ed, &cache, &["apply", "-f", forged.to_str().unwrap()]);
    assert!(
        text(&out).contains("are written and deleted by cluster admins only"),
        "{}",
        text(&out)
    );
    let out = kubectl_as(
        &ed,
        &cache,
        &[
            "-n",
            "kube-system",
            "create",
            "secret",
            "generic",
            "skiff-user-token-abcdef",
            "--from-literal=user=x",
        ],
    );
    assert!(text(&out).contains("cluster admins only"), "{}", text(&out));
    let out = kubectl_as(
        &ed,
        &cache,
        &[
            "-n",
            "kube-system",
            "delete",
            "secret",
            "skiff-join-token-default",
        ],
    );
    assert!(text(&out).contains("cluster admins only"), "{}", text(&out));
    // (kubectl deletes one by one: the credentials' deletes are refused, the rest go.)
    kubectl_as(
        &ed,
        &cache,
        &["-n", "kube-system", "delete", "secrets", "--all"],
    );
    let left = s.kubectl_ok(&["-n", "kube-system", "get", "secrets", "-o", "name"]);
    assert!(
        left.contains("secret/skiff-join-token-default"),
        "deletecollection spared the credentials: {left}"
    );
    // Ordinary Secrets there are still the admin role's to manage.
    let out = kubectl_as(
        &ed,
        &cache,
        &[
            "-n",
            "kube-system",
            "create",
            "secret",
            "generic",
            "app",
            "--from-literal=a=b",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // A Role whose rules expand past what an escalation check will walk.
    let verbs: Vec<String> = (0..400).map(|i| format!("v{i}")).collect();
    let resources: Vec<String> = (0..400).map(|i| format!("r{i}")).collect();
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "huge", "namespace": "kube-system"},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}],
    });
    let file = tmp.path().join("huge.json");
    std::fs::write(&file, role.to_string()).unwrap();
    let started = std::time::Instant::now();
    let out = kubectl_as(&ed, &cache, &["apply", "-f", file.to_str().unwrap()]);
    assert!(text(&out).contains("too many to check"), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
