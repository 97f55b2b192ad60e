//! seccomp `Localhost` profiles through the real binary: a profile from the node's
//! `seccomp/` directory confines the container (a syscall it denies fails inside), and a
//! missing or escaping profile is a `CreateContainerConfigError` that says why;
//! `RuntimeDefault` runs whether or not the container may gain privileges.
#![allow(clippy::unwrap_used)]

mod common;

use common::pods::{apply, cpod, terminated, wait_for, waiting};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_seccomp_profiles_confine_containers() {
    let reg = common::Registry::start();
    let image = reg.push_example_image("busybox:1");
    let s = common::Server::start_node("edge-seccomp", &[]);
    let pods: Api<Pod> = Api::default_namespaced(common::kube_client(&s).await);
    let profiles = s.agent_dir().join("seccomp");
    std::fs::create_dir_all(profiles.join("team")).unwrap();
    // Everything allowed but making directories, which fails with EPERM.
    std::fs::write(
        profiles.join("team/no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let profile = |name: &str| {
        format!(
            "  securityContext:\n    seccompProfile: {{type: Localhost, localhostProfile: {name:?}}}\n"
        )
    };
    let try_mkdir = "mkdir /tmp/d && echo mkdir:made || echo mkdir:refused";
    apply(
        &s,
        &[
            cpod(
                "confined",
                &image,
                "Never",
                try_mkdir,
                "",
                &profile("team/no-mkdir.json"),
            ),
            cpod("free", &image, "Never", try_mkdir, "", ""),
            // The default profile, for a container that may still gain privileges (no
            // allowPrivilegeEscalation: false): loaded while the capability to load it
            // without no_new_privs is still held.
            cpod(
                "runtime-default",
                &image,
                "Never",
                try_mkdir,
                "",
                "  securityContext:\n    seccompProfile: {type: RuntimeDefault}\n",
            ),
            cpod(
                "missing",
                &image,
                "Never",
                try_mkdir,
                "",
                &profile("none.json"),
            ),
            cpod(
                "escaping",
                &image,
                "Never",
                try_mkdir,
                "",
                &profile("../../etc/x.json"),
            ),
        ]
        .join("---\n"),
    );
    for name in ["confined", "free", "runtime-default"] {
        let p = wait_for(&pods, name, "completed", |p| terminated(p).is_some()).await;
        assert_eq!(terminated(&p).unwrap().2, 0, "{name}: {:?}", p.status);
    }
    let confined = s.kubectl_ok(&["logs", "confined"]);
    assert!(
        // (stdout and stderr are two pipes: their lines may come in either order)
        confined.contains("Operation not permitted")
            && confined.lines().any(|l| l.trim() == "mkdir:refused"),
        "the profile applies: {confined}"
    );
    let free = s.kubectl_ok(&["logs", "free"]);
    assert_eq!(free.trim(), "mkdir:made", "no profile, no filter");
    let default = s.kubectl_ok(&["logs", "runtime-default"]);
    assert_eq!(default.trim(), "mkdir:made", "RuntimeDefault allows mkdir");
    for (name, why) in [
        ("missing", "failed to load seccomp profile"),
        (
            "escaping",
            "must be a relative path inside the node's profile directory",
        ),
    ] {
        let p = wait_for(&pods, name, "refused", |p| {
            waiting(p).is_some_and(|(r, _)| r == "CreateContainerConfigError")
        })
        .await;
        let (_, message) = waiting(&p).unwrap();
        assert!(message.contains(why), "{name}: {message}");
    }
}
