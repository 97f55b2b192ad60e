//! The artifact store against a real `docker-registry` on loopback.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use skiff_runtime::artifacts::{
    ArtifactContent, ArtifactError, ArtifactKind, ArtifactStore, CNCF_WASM_CONFIG, CNCF_WASM_LAYER,
    DockerConfig, PullFailureReason, PullPolicy, PushOptions, PushProgress, RegistryCredentials,
    SPIN_CONFIG, WASM_CONTENT_LAYER, WASM_TO_OCI_CONFIG, WasmFlavor, WasmLayout, push,
};
use support::{Blob, EMPTY_COMPONENT, TestRegistry, module, push_layout, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ANON: RegistryCredentials = RegistryCredentials::Anonymous;

async fn store() -> (tempfile::TempDir, ArtifactStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path()).await.expect("open store");
    (dir, store)
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn wasm_bytes(artifact: &skiff_runtime::artifacts::Artifact) -> Vec<u8> {
    let path = artifact.wasm_path().expect("a wasm artifact");
    std::fs::read(path).expect("read cached wasm")
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn push_module(reg: &TestRegistry, repo_tag: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(dir.path(), "m.wasm", bytes);
    push(
        &file,
        &reg.reference(repo_tag),
        &PushOptions::default(),
        |_| {},
    )
    .await
    .expect("push")
    .digest
}

#[tokio::test]
async fn push_then_pull_cncf_round_trip() {
    init_tracing();
    let reg = support::registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = module(1);
    let file = write_file(dir.path(), "hello.wasm", &bytes);
    let reference = reg.reference("hello:1");
    let seen: Arc<Mutex<Vec<PushProgress>>> = Arc::default();
    let sink = seen.clone();
    let outcome = push(&file, &reference, &PushOptions::default(), move |p| {
        sink.lock().expect("lock").push(p)
    })
    .await
    .expect("push");
    assert_eq!(outcome.flavor, WasmFlavor::Module);
    assert_eq!(outcome.wasm_digest, sha256(&bytes));
    let seen = seen.lock().expect("lock").clone();
    let last = seen.last().expect("progress reported");
    assert_eq!(
        (last.sent, last.total),
        (bytes.len() as u64, bytes.len() as u64)
    );
    assert!(seen.windows(2).all(|w| w[0].sent <= w[1].sent), "{seen:?}");

    // What is in the registry is the CNCF layout.
    let client = reg.client();
    let r: Reference = reference.parse().expect("ref");
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&r, &RegistryAuth::Anonymous)
        .await
        .expect("manifest");
    assert_eq!(digest, outcome.digest);
    assert_eq!(manifest.config.media_type, CNCF_WASM_CONFIG);
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, CNCF_WASM_LAYER);
    let config: serde_json::Value = serde_json::from_str(&config).expect("config json");
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip1");
    assert!(
        config["created"].as_str().is_some_and(|c| c.contains('T')),
        "{config}"
    );

    let (_d, store) = store().await;
    let artifact = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull");
    assert_eq!(artifact.kind(), ArtifactKind::WasmModule);
    assert_eq!(artifact.digest, outcome.digest);
    assert_eq!(wasm_bytes(&artifact), bytes);
    match &artifact.content {
        ArtifactContent::Wasm(w) => {
            assert_eq!(w.layout, WasmLayout::Cncf);
            assert_eq!(w.digest, sha256(&bytes));
            assert_eq!(w.size, bytes.len() as u64);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        artifact.image_id(),
        format!("{}/hello@{}", reg.addr, outcome.digest)
    );

    // A component gets os wasip2 and comes back as a component.
    let comp = write_file(dir.path(), "c.wasm", EMPTY_COMPONENT);
    let comp_ref = reg.reference("comp:1");
    let pushed = push(&comp, &comp_ref, &PushOptions::default(), |_| {})
        .await
        .expect("push component");
    assert_eq!(pushed.flavor, WasmFlavor::Component);
    let (_, _, config) = client
        .pull_manifest_and_config(&comp_ref.parse().expect("ref"), &RegistryAuth::Anonymous)
        .await
        .expect("manifest");
    assert!(config.contains(r#""os":"wasip2""#), "{config}");
    let artifact = store
        .pull(&comp_ref, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull component");
    assert_eq!(artifact.kind(), ArtifactKind::WasmComponent);

    // `localhost` is loopback too: plain HTTP without being listed as insecure.
    let port = reg.addr.rsplit(':').next().expect("port");
    let via_localhost = format!("localhost:{port}/hello:1");
    let artifact = store
        .pull(&via_localhost, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull via localhost");
    assert_eq!(wasm_bytes(&artifact), bytes);

    // Pushing the same bytes again uploads no layer.
    let again = push(
        &file,
        &reg.reference("hello:2"),
        &PushOptions::default(),
        |_| {},
    )
    .await
    .expect("push again");
    assert!(again.layer_existed);
}

#[tokio::test]
async fn pulls_spin_wasm_to_oci_and_single_wasm_layer_layouts() {
    init_tracing();
    let reg = support::registry();
    let client = reg.client();
    let anon = RegistryAuth::Anonymous;
    let (_d, store) = store().await;

    let spin = module(10);
    let spin_config = br#"{"spin_lock_version":1,"components":[{"id":"hello"}]}"#.to_vec();
    push_layout(
        &client,
        &reg.reference("spin:1"),
        OCI_MANIFEST,
        Blob {
            media_type: SPIN_CONFIG,
            data: spin_config,
        },
        vec![
            Blob {
                media_type: WASM_CONTENT_LAYER,
                data: spin.clone(),
            },
            Blob {
                media_type: "application/vnd.wasm.content.layer.v1+data",
                data: b"static file".to_vec(),
            },
        ],
        &anon,
    )
    .await
    .expect("push spin");
    let artifact = store
        .pull(&reg.reference("spin:1"), PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull spin");
    assert_eq!(wasm_bytes(&artifact), spin);
    assert!(matches!(&artifact.content, ArtifactContent::Wasm(w) if w.layout == WasmLayout::Spin));

    let legacy = module(11);
    push_layout(
        &client,
        &reg.reference("legacy:1"),
        OCI_MANIFEST,
        Blob {
            media_type: WASM_TO_OCI_CONFIG,
            data: b"{}".to_vec(),
        },
        vec![Blob {
            media_type: WASM_CONTENT_LAYER,
            data: legacy.clone(),
        }],
        &anon,
    )
    .await
    .expect("push wasm-to-oci");
    let artifact = store
        .pull(&reg.reference("legacy:1"), PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull wasm-to-oci");
    assert_eq!(wasm_bytes(&artifact), legacy);
    assert!(
        matches!(&artifact.content, ArtifactContent::Wasm(w) if w.layout == WasmLayout::WasmToOci)
    );

    // A Spin app with two components is refused with a clear reason.
    push_layout(
        &client,
        &reg.reference("spin:multi"),
        OCI_MANIFEST,
        Blob {
            media_type: SPIN_CONFIG,
            data: b"{}".to_vec(),
        },
        vec![
            Blob {
                media_type: WASM_CONTENT_LAYER,
                data: module(12),
            },
            Blob {
                media_type: WASM_CONTENT_LAYER,
                data: module(13),
            },
        ],
        &anon,
    )
    .await
    .expect("push multi spin");
    let err = store
        .pull(
            &reg.reference("spin:multi"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect_err("multi-component spin");
    assert_eq!(err.reason(), PullFailureReason::InvalidArtifact);
    assert!(err.to_string().contains("2 components"), "{err}");
}

#[tokio::test]
async fn pulls_image_whose_layer_holds_one_wasm_file() {
    init_tracing();
    let reg = support::registry();
    let client = reg.client();
    let anon = RegistryAuth::Anonymous;
    let (_d, store) = store().await;
    let wasm = module(20);

    for (tag, gzip, manifest_type, config_type) in [
        ("oci-gz", true, OCI_MANIFEST, OCI_CONFIG),
        ("docker-tar", false, DOCKER_MANIFEST, DOCKER_CONFIG),
    ] {
        let layer_type = match (manifest_type, gzip) {
            (OCI_MANIFEST, true) => "application/vnd.oci.image.layer.v1.tar+gzip",
            _ => "application/vnd.docker.image.rootfs.diff.tar",
        };
        let reference = reg.reference(&format!("img:{tag}"));
        push_layout(
            &client,
            &reference,
            manifest_type,
            Blob {
                media_type: config_type,
                data: support::image_config("wasip1", "wasm"),
            },
            vec![Blob {
                media_type: layer_type,
                data: support::tar_layer(&[("app/app.wasm", &wasm)], gzip),
            }],
            &anon,
        )
        .await
        .expect("push image");
        let artifact = store
            .pull(&reference, PullPolicy::IfNotPresent, &ANON)
            .await
            .expect("pull image");
        assert_eq!(artifact.kind(), ArtifactKind::WasmModule, "{tag}");
        assert_eq!(wasm_bytes(&artifact), wasm, "{tag}");
        match &artifact.content {
            ArtifactContent::Wasm(w) => {
                assert_eq!(w.layout, WasmLayout::ImageLayer);
                assert_eq!(w.digest, sha256(&wasm));
            }
            other => panic!("{other:?}"),
        }
    }

    // A layer with more than the .wasm is a container image, reported with its layers.
    let reference = reg.reference("img:busy");
    push_layout(
        &client,
        &reference,
        OCI_MANIFEST,
        Blob {
            media_type: OCI_CONFIG,
            data: support::image_config("linux", "amd64"),
        },
        vec![Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            data: support::tar_layer(
                &[("app/app.wasm", &wasm), ("app/run.sh", b"#!/bin/sh\n")],
                true,
            ),
        }],
        &anon,
    )
    .await
    .expect("push container");
    let artifact = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull container");
    assert_eq!(artifact.kind(), ArtifactKind::ContainerImage);
    match &artifact.content {
        ArtifactContent::Container(image) => {
            assert_eq!(image.layers.len(), 1);
            assert!(
                image.layers[0].path.is_some(),
                "the single layer was inspected, so cached"
            );
            assert!(image.config_path.is_file());
        }
        other => panic!("{other:?}"),
    }

    // Two layers: a container image, every layer fetched and verified for the OCI executor.
    let reference = reg.reference("img:two");
    let before = store.stats().blob_downloads;
    push_layout(
        &client,
        &reference,
        OCI_MANIFEST,
        Blob {
            media_type: OCI_CONFIG,
            data: support::image_config("linux", "riscv64"),
        },
        vec![
            Blob {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                data: support::tar_layer(&[("a", b"1")], false),
            },
            Blob {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                data: support::tar_layer(&[("b", b"2")], false),
            },
        ],
        &anon,
    )
    .await
    .expect("push two-layer");
    let artifact = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull two-layer");
    assert_eq!(artifact.kind(), ArtifactKind::ContainerImage);
    assert_eq!(
        store.stats().blob_downloads,
        before + 3,
        "the config and both layers"
    );
    match &artifact.content {
        ArtifactContent::Container(image) => {
            assert!(image.layers.iter().all(|l| l.path.is_some()));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn image_index_prefers_wasi_then_linux() {
    init_tracing();
    let reg = support::registry();
    let client = reg.client();
    let anon = RegistryAuth::Anonymous;
    let (_d, store) = store().await;
    let wasm = module(30);
    let wasm_digest = push_layout(
        &client,
        &reg.reference("multi:wasm-part"),
        OCI_MANIFEST,
        Blob {
            media_type: CNCF_WASM_CONFIG,
            data: br#"{"architecture":"wasm","os":"wasip1"}"#.to_vec(),
        },
        vec![Blob {
            media_type: CNCF_WASM_LAYER,
            data: wasm.clone(),
        }],
        &anon,
    )
    .await
    .expect("push wasm part");
    let linux_wasm = module(31);
    let linux_digest = push_layout(
        &client,
        &reg.reference("multi:linux-part"),
        OCI_MANIFEST,
        Blob {
            media_type: OCI_CONFIG,
            data: support::image_config("linux", "amd64"),
        },
        vec![Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            data: support::tar_layer(&[("app.wasm", &linux_wasm)], true),
        }],
        &anon,
    )
    .await
    .expect("push linux part");
    let repo = reg.reference("multi:x");
    let wasm_size = support::manifest_size(&client, &repo, &wasm_digest).await;
    let linux_size = support::manifest_size(&client, &repo, &linux_digest).await;
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let entry = |digest: &str, size: usize, os: &str, arch: &str| {
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
            "platform": {"os": os, "architecture": arch}})
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&linux_digest, linux_size, "linux", arch), entry(&wasm_digest, wasm_size, "wasip1", "wasm")],
    });
    let r: Reference = reg.reference("multi:both").parse().expect("ref");
    let index_digest = support::push_manifest(
        &client,
        &r,
        OCI_INDEX,
        &serde_json::to_vec(&index).expect("json"),
    )
    .await
    .expect("push index");
    let artifact = store
        .pull(
            &reg.reference("multi:both"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect("pull index");
    assert_eq!(artifact.digest, index_digest);
    assert_eq!(artifact.manifest_digest, wasm_digest);
    assert_eq!(wasm_bytes(&artifact), wasm);

    // Without a Wasm entry, linux/<node arch> is taken.
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&wasm_digest, wasm_size, "plan9", "mips"), entry(&linux_digest, linux_size, "linux", arch)],
    });
    let r: Reference = reg.reference("multi:linux").parse().expect("ref");
    support::push_manifest(
        &client,
        &r,
        OCI_INDEX,
        &serde_json::to_vec(&index).expect("json"),
    )
    .await
    .expect("push index");
    let artifact = store
        .pull(
            &reg.reference("multi:linux"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect("pull linux entry");
    assert_eq!(artifact.manifest_digest, linux_digest);
    assert_eq!(wasm_bytes(&artifact), linux_wasm);

    // Neither: refused, naming what was offered.
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&wasm_digest, wasm_size, "plan9", "mips"), entry(&linux_digest, linux_size, "windows", "mips")],
    });
    let r: Reference = reg.reference("multi:none").parse().expect("ref");
    support::push_manifest(
        &client,
        &r,
        OCI_INDEX,
        &serde_json::to_vec(&index).expect("json"),
    )
    .await
    .expect("push index");
    let err = store
        .pull(
            &reg.reference("multi:none"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect_err("no platform");
    assert_eq!(err.reason(), PullFailureReason::InvalidArtifact);
    assert!(
        err.to_string().contains("plan9/mips, windows/mips"),
        "{err}"
    );
}

#[tokio::test]
async fn tampered_registry_blob_is_invalid_artifact() {
    init_tracing();
    let reg = support::registry();
    let bytes = module(40);
    push_module(&reg, "tampered:1", &bytes).await;
    support::tamper(&reg.blob_data(&sha256(&bytes)));
    let (dir, store) = store().await;
    let err = store
        .pull(
            &reg.reference("tampered:1"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect_err("tampered blob");
    assert_eq!(err.reason(), PullFailureReason::InvalidArtifact, "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    // Nothing unverified was kept.
    let hex = sha256(&bytes).trim_start_matches("sha256:").to_string();
    assert!(!dir.path().join("blobs/sha256").join(hex).exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[tokio::test]
async fn missing_artifact_is_err_image_pull_with_registry_reason() {
    init_tracing();
    let reg = support::registry();
    push_module(&reg, "present:1", &module(50)).await;
    let (_d, store) = store().await;

    let err = store
        .pull(
            &reg.reference("present:nope"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect_err("missing tag");
    assert_eq!(err.reason(), PullFailureReason::ErrImagePull);
    assert!(matches!(err, ArtifactError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("manifest unknown"),
        "{err}"
    );

    let err = store
        .pull(&reg.reference("absent/repo:1"), PullPolicy::Always, &ANON)
        .await
        .expect_err("missing repo");
    assert_eq!(err.reason(), PullFailureReason::ErrImagePull);
    assert!(matches!(err, ArtifactError::NotFound { .. }), "{err:?}");

    // Nothing listens: a network error, still ErrImagePull, with the cause.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = store
        .pull(
            &format!("127.0.0.1:{port}/x:1"),
            PullPolicy::IfNotPresent,
            &ANON,
        )
        .await
        .expect_err("no registry");
    assert_eq!(err.reason(), PullFailureReason::ErrImagePull);
    assert!(err.to_string().to_lowercase().contains("connect"), "{err}");

    let err = store
        .pull("Not A Reference!!", PullPolicy::IfNotPresent, &ANON)
        .await
        .expect_err("bad reference");
    assert_eq!(err.reason(), PullFailureReason::InvalidImageName);
}

#[tokio::test]
async fn non_wasm_bytes_are_invalid_artifact() {
    init_tracing();
    let reg = support::registry();
    let client = reg.client();
    push_layout(
        &client,
        &reg.reference("notwasm:1"),
        OCI_MANIFEST,
        Blob {
            media_type: CNCF_WASM_CONFIG,
            data: br#"{"architecture":"wasm","os":"wasip1"}"#.to_vec(),
        },
        vec![Blob {
            media_type: CNCF_WASM_LAYER,
            data: b"#!/bin/sh\necho not wasm\n".to_vec(),
        }],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push");
    push_layout(
        &client,
        &reg.reference("mystery:1"),
        OCI_MANIFEST,
        Blob {
            media_type: "application/x-mystery",
            data: b"{}".to_vec(),
        },
        vec![Blob {
            media_type: "application/x-mystery-layer",
            data: b"?".to_vec(),
        }],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push");
    let (dir, store) = store().await;
    let err = store
        .pull(&reg.reference("notwasm:1"), PullPolicy::IfNotPresent, &ANON)
        .await
        .expect_err("not wasm");
    assert_eq!(err.reason(), PullFailureReason::InvalidArtifact);
    assert!(err.to_string().contains("\\0asm"), "{err}");
    let err = store
        .pull(&reg.reference("mystery:1"), PullPolicy::IfNotPresent, &ANON)
        .await
        .expect_err("unknown media type");
    assert_eq!(err.reason(), PullFailureReason::InvalidArtifact);
    assert!(
        err.to_string().contains("application/x-mystery-layer"),
        "{err}"
    );

    // Neither is importable as a .wasm either.
    let file = write_file(dir.path(), "x.wasm", b"\0asm\x01\0\0\0\x01\x7f");
    let err = store
        .import(&file, "local/bad:1")
        .await
        .expect_err("truncated wasm");
    assert_eq!(err.reason(), PullFailureReason::InvalidArtifact);
}

#[tokio::test]
async fn pull_policies_follow_kubernetes() {
    init_tracing();
    let reg = support::registry();
    let reference = reg.reference("app:latest");
    let first = module(60);
    let first_digest = push_module(&reg, "app:latest", &first).await;
    let (_d, store) = store().await;

    let err = store
        .pull(&reference, PullPolicy::Never, &ANON)
        .await
        .expect_err("never, not cached");
    assert_eq!(err.reason(), PullFailureReason::ErrImageNeverPull);
    assert_eq!(
        store.stats().digest_resolutions,
        0,
        "Never does not touch the registry"
    );

    assert_eq!(PullPolicy::default_for(&reference), PullPolicy::Always);
    let a = store
        .pull(&reference, PullPolicy::Always, &ANON)
        .await
        .expect("always");
    assert_eq!(a.digest, first_digest);
    let after_first = store.stats();
    assert_eq!(after_first.blob_downloads, 2, "config and layer");

    // IfNotPresent and Never: served from the cache, no registry traffic.
    let b = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("ifnotpresent");
    let c = store
        .pull(&reference, PullPolicy::Never, &ANON)
        .await
        .expect("never, cached");
    assert_eq!(
        (b.digest.as_str(), c.digest.as_str()),
        (first_digest.as_str(), first_digest.as_str())
    );
    assert_eq!(store.stats(), after_first);

    // Always asks again, but downloads nothing new while the tag is unchanged.
    store
        .pull(&reference, PullPolicy::Always, &ANON)
        .await
        .expect("always again");
    let stats = store.stats();
    assert_eq!(stats.digest_resolutions, after_first.digest_resolutions + 1);
    assert_eq!(stats.blob_downloads, after_first.blob_downloads);

    // The tag moves: Always follows it; IfNotPresent keeps what the node has... until
    // Always has pulled the new one, which then is what the name means locally.
    let second = module(61);
    let second_digest = push_module(&reg, "app:latest", &second).await;
    let cached = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("stale ok");
    assert_eq!(cached.digest, first_digest);
    let fresh = store
        .pull(&reference, PullPolicy::Always, &ANON)
        .await
        .expect("always follows");
    assert_eq!(fresh.digest, second_digest);
    assert_eq!(wasm_bytes(&fresh), second);
    let cached = store
        .pull(&reference, PullPolicy::Never, &ANON)
        .await
        .expect("never sees new");
    assert_eq!(cached.digest, second_digest);

    // A digest reference is found by digest.
    let by_digest = format!("{}/app@{first_digest}", reg.addr);
    let pinned = store
        .pull(&by_digest, PullPolicy::Never, &ANON)
        .await
        .expect("by digest");
    assert_eq!(wasm_bytes(&pinned), first);
}

#[tokio::test]
async fn basic_auth_with_dockerconfigjson_credentials() {
    init_tracing();
    let reg = support::registry_with_auth("alice", "s3cret");
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = module(70);
    let file = write_file(dir.path(), "a.wasm", &bytes);
    let reference = reg.reference("private/app:1");

    let err = push(&file, &reference, &PushOptions::default(), |_| {})
        .await
        .expect_err("anonymous push");
    assert!(matches!(err, ArtifactError::Unauthorized { .. }), "{err:?}");

    // The Secret's contents, as the agent would read them.
    let secret = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        reg.addr,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret")
    );
    let creds = DockerConfig::parse(secret.as_bytes())
        .expect("parse")
        .credentials_for(&reference)
        .expect("entry for the registry");
    let options = PushOptions {
        insecure: false,
        credentials: creds.clone(),
    };
    push(&file, &reference, &options, |_| {})
        .await
        .expect("push with auth");

    let (_d, store) = store().await;
    let err = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect_err("anonymous pull");
    assert_eq!(err.reason(), PullFailureReason::ErrImagePull);
    assert!(matches!(err, ArtifactError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("401"), "{err}");

    let wrong = RegistryCredentials::basic("alice", "wrong");
    let err = store
        .pull(&reference, PullPolicy::IfNotPresent, &wrong)
        .await
        .expect_err("wrong password");
    assert!(matches!(err, ArtifactError::Unauthorized { .. }), "{err:?}");

    let artifact = store
        .pull(&reference, PullPolicy::IfNotPresent, &creds)
        .await
        .expect("pull with auth");
    assert_eq!(wasm_bytes(&artifact), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_download_once() {
    init_tracing();
    let reg = support::registry();
    let bytes = module(110);
    push_module(&reg, "shared:1", &bytes).await;
    push_module(&reg, "shared:2", &bytes).await;
    // Each new connection waits, so the pulls below certainly overlap.
    let proxy = support::SlowProxy::start(&reg.addr, std::time::Duration::from_millis(300)).await;
    let (_d, store) = store().await;

    // Six pods start with the same reference at once: one resolution, one download.
    let reference = format!("{}/shared:1", proxy.addr);
    let pulls = (0..6).map(|_| {
        let store = store.clone();
        let reference = reference.clone();
        tokio::spawn(async move { store.pull(&reference, PullPolicy::Always, &ANON).await })
    });
    let mut digests = Vec::new();
    for result in futures::future::join_all(pulls).await {
        let artifact = result.expect("join").expect("pull");
        assert_eq!(wasm_bytes(&artifact), bytes);
        digests.push(artifact.digest);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    let stats = store.stats();
    assert_eq!(stats.digest_resolutions, 1, "{stats:?}");
    assert_eq!(stats.manifest_downloads, 1, "{stats:?}");
    assert_eq!(stats.blob_downloads, 2, "config and layer once: {stats:?}");

    // Two references whose manifests differ but share the layer, pulled at once: two
    // pulls, but the shared layer is downloaded once.
    let (_d2, store) = crate::store().await;
    let pulls = ["shared:1", "shared:2"].map(|tag| {
        let store = store.clone();
        let reference = format!("{}/{tag}", proxy.addr);
        tokio::spawn(async move {
            store
                .pull(&reference, PullPolicy::IfNotPresent, &ANON)
                .await
        })
    });
    for result in futures::future::join_all(pulls).await {
        assert_eq!(wasm_bytes(&result.expect("join").expect("pull")), bytes);
    }
    let stats = store.stats();
    assert_eq!(stats.digest_resolutions, 2, "{stats:?}");
    assert_eq!(stats.blob_downloads, 3, "two configs, one layer: {stats:?}");
}

#[tokio::test]
async fn import_wasm_for_never_policy_and_images_lists_it() {
    init_tracing();
    let (dir, store) = store().await;
    let bytes = module(80);
    let file = write_file(dir.path(), "app.wasm", &bytes);
    let imported = store
        .import(&file, "edge.local/app:v1")
        .await
        .expect("import");
    assert_eq!(imported.kind(), ArtifactKind::WasmModule);
    let again = store
        .import(&file, "edge.local/app:v1")
        .await
        .expect("import twice");
    assert_eq!(again.digest, imported.digest, "imports are deterministic");

    let pulled = store
        .pull("edge.local/app:v1", PullPolicy::Never, &ANON)
        .await
        .expect("never finds the import");
    assert_eq!(wasm_bytes(&pulled), bytes);
    let pulled = store
        .pull("edge.local/app:v1", PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("ifnotpresent finds the import");
    assert_eq!(pulled.digest, imported.digest);

    let images = store.images().await;
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].names,
        vec![
            format!("edge.local/app:v1"),
            format!("edge.local/app@{}", imported.digest),
        ]
    );
    assert!(images[0].size_bytes >= bytes.len() as u64);

    // Garbage collection: a second import, then the first name is removed.
    let other = write_file(dir.path(), "other.wasm", &module(81));
    store
        .import(&other, "edge.local/other:v1")
        .await
        .expect("import other");
    assert!(store.remove("edge.local/other:v1").await.expect("remove"));
    assert!(
        !store
            .remove("edge.local/other:v1")
            .await
            .expect("remove twice")
    );
    let kept = store
        .prune(std::time::Duration::from_secs(3600))
        .await
        .expect("prune young");
    assert_eq!((kept.artifacts, kept.blobs), (1, 0), "young blobs are kept");
    let pruned = store.prune(std::time::Duration::ZERO).await.expect("prune");
    assert_eq!(
        pruned.blobs, 3,
        "manifest, config and layer of the removed import"
    );
    assert_eq!(store.images().await.len(), 1);
    let still = store
        .pull("edge.local/app:v1", PullPolicy::Never, &ANON)
        .await
        .expect("the named import survives pruning");
    assert_eq!(wasm_bytes(&still), bytes);

    // The index survives a restart of the agent.
    drop(store);
    let reopened = ArtifactStore::open(dir.path()).await.expect("reopen");
    let pulled = reopened
        .pull("edge.local/app:v1", PullPolicy::Never, &ANON)
        .await
        .expect("after reopen");
    assert_eq!(pulled.digest, imported.digest);
}

#[tokio::test]
async fn import_skopeo_oci_archive() {
    init_tracing();
    let reg = support::registry();
    assert!(
        std::process::Command::new("skopeo")
            .arg("--version")
            .output()
            .is_ok(),
        "skopeo is not installed (Debian package skopeo; scripts/test.sh installs it)"
    );
    let client = reg.client();
    let wasm = module(90);
    push_layout(
        &client,
        &reg.reference("arch/img:1"),
        OCI_MANIFEST,
        Blob {
            media_type: OCI_CONFIG,
            data: support::image_config("wasip1", "wasm"),
        },
        vec![Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            data: support::tar_layer(&[("app/app.wasm", &wasm)], true),
        }],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push image");
    let cncf = module(91);
    push_module(&reg, "arch/cncf:1", &cncf).await;

    let work = tempfile::tempdir().expect("tempdir");
    let (_d, store) = store().await;
    for (repo, want) in [("arch/img:1", &wasm), ("arch/cncf:1", &cncf)] {
        let archive = work
            .path()
            .join(format!("{}.tar", repo.replace(['/', ':'], "-")));
        let out = tokio::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}", reg.reference(repo)))
            .arg(format!("oci-archive:{}:{}", archive.display(), "v1"))
            .output()
            .await
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = format!("airgap.local/{repo}");
        let imported = store.import(&archive, &name).await.expect("import archive");
        assert_eq!(&wasm_bytes(&imported), want, "{repo}");
        let pulled = store
            .pull(&name, PullPolicy::Never, &ANON)
            .await
            .expect("never");
        assert_eq!(pulled.digest, imported.digest);
    }
    assert_eq!(store.stats().blob_downloads, 0, "imports use no network");
}

#[tokio::test]
async fn corrupt_cached_blob_is_detected_and_pulled_again() {
    init_tracing();
    let reg = support::registry();
    let bytes = module(100);
    push_module(&reg, "fragile:1", &bytes).await;
    let reference = reg.reference("fragile:1");
    let (dir, store) = store().await;
    let artifact = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("pull");
    let path = artifact.wasm_path().expect("wasm").to_path_buf();
    assert!(path.starts_with(dir.path()));

    // Same length, different bytes. The kernel's timestamps are coarse (a few ms); make
    // sure the write is not within the same tick as the download.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    support::tamper(&path);
    let before = store.stats().blob_downloads;
    let again = store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("re-pull");
    assert_eq!(wasm_bytes(&again), bytes);
    assert_eq!(
        store.stats().blob_downloads,
        before + 1,
        "only the wasm layer again"
    );

    // With Never the corrupt copy cannot be replaced: reported as not present.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    support::tamper(&path);
    let err = store
        .pull(&reference, PullPolicy::Never, &ANON)
        .await
        .expect_err("corrupt, never");
    assert_eq!(err.reason(), PullFailureReason::ErrImageNeverPull);
    assert!(err.to_string().contains("failed verification"), "{err}");

    // A fresh process re-hashes on first use, so corruption from before it started is
    // caught too.
    store
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("heal");
    drop(store);
    support::tamper(&path);
    let reopened = ArtifactStore::open(dir.path()).await.expect("reopen");
    let healed = reopened
        .pull(&reference, PullPolicy::IfNotPresent, &ANON)
        .await
        .expect("re-pull after reopen");
    assert_eq!(wasm_bytes(&healed), bytes);
    assert_eq!(reopened.stats().blob_downloads, 1);
}
