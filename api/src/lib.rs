//! Skiff's control plane: a Kubernetes-compatible apiserver on an embedded store.
//!
//! Data flows from a client request through [`apiserver`] (routing, authentication,
//! the verbs), [`codec`] and [`validation`] (the object as Kubernetes would accept it),
//! into the [`store`] (etcd's model on a redb file), and back out to watchers.
//! [`server::run`] wires it all together behind TLS; start reading there.
//!
//! Nodes join with the token `skiff server` writes ([`token`]), get a credential of their
//! own, and may then touch only their own objects ([`auth`]); the apiserver reaches a
//! node agent for pod logs as [`node`] describes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), skiff_api::server::ServerError> {
//! use skiff_api::server::{run, ServerConfig};
//! let cfg = ServerConfig {
//!     data_dir: "/tmp/skiff".into(),
//!     bind: [127, 0, 0, 1].into(),
//!     port: 6443,
//!     limits: Default::default(),
//!     local_node: None,
//!     audit: None,
//!     pod_security_default: skiff_api::podsecurity::Level::Baseline,
//!     service_cidr: skiff_api::apiserver::serviceips::default_service_cidr(),
//!     tls_sans: vec![],
//! };
//! run(cfg, std::future::pending(), |r| println!("kubeconfig: {}", r.credentials.kubeconfig.display())).await
//! # }
//! ```

pub mod apiserver;
pub mod audit;
pub mod auth;
pub mod client;
pub mod codec;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod events;
pub mod https;
pub mod listen;
pub mod metrics;
pub mod node;
pub mod patch;
pub mod pki;
pub mod podsecurity;
pub mod protobuf;
pub mod resources;
pub mod select;
pub mod server;
pub mod store;
pub mod table;
pub mod token;
pub mod validation;
