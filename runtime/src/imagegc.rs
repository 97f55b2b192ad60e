//! Image garbage collection, as the kubelet's: when the disk holding the agent's data
//! is fuller than `high_percent`, images no pod of this node uses, and none used in the
//! last `min_age`, are removed, largest first, until it would be down to `low_percent`;
//! then the blobs and unpacked layers only they used go. The age rule keeps an image a
//! pod is about to start (pulled, but not yet seen in use) from going under it.
//! [`choose`] decides (pure, table-tested); [`collect`] acts.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::artifacts::{ArtifactStore, CachedImage, parse_reference};

/// When to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Collect when the disk is at least this full (percent; 100 never collects).
    pub high_percent: u8,
    /// Down to this.
    pub low_percent: u8,
    /// How often to look.
    pub period: Duration,
    /// Images handed to a container more recently than this stay (the kubelet's
    /// `--image-minimum-gc-age`).
    pub min_age: Duration,
}

impl Default for Policy {
    /// The kubelet's defaults: 85 %, 80 %, every 5 minutes, 2 minutes minimum age.
    fn default() -> Self {
        Policy {
            high_percent: 85,
            low_percent: 80,
            period: Duration::from_secs(300),
            min_age: Duration::from_secs(120),
        }
    }
}

/// The references a pod's containers use, normalized (`busybox` is
/// `docker.io/library/busybox:latest`).
pub fn images_of(pod: &Pod) -> Vec<String> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.image.as_deref())
        .filter_map(|i| parse_reference(i).ok().map(|r| r.whole()))
        .collect()
}

/// Which images to remove: none below `high_percent`; else unused ones, largest first,
/// until the bytes they hold would bring the disk to `low_percent`. `free` and `total`
/// are the disk's bytes; an image is in use if any of its names is in `in_use`, or if it
/// was last used less than `policy.min_age` before `now`.
pub fn choose<'a>(
    policy: &Policy,
    (free, total): (u64, u64),
    images: &'a [CachedImage],
    in_use: &HashSet<String>,
    now: Instant,
) -> Vec<&'a CachedImage> {
    if total == 0 || policy.high_percent >= 100 {
        return Vec::new();
    }
    let used = total.saturating_sub(free);
    if used * 100 < u64::from(policy.high_percent) * total {
        return Vec::new();
    }
    let goal = u64::from(policy.low_percent.min(policy.high_percent)) * total / 100;
    let mut need = used.saturating_sub(goal);
    let mut unused: Vec<&CachedImage> = images
        .iter()
        .filter(|i| !i.names.iter().any(|n| in_use.contains(n)))
        .filter(|i| {
            i.last_used
                .is_none_or(|t| now.saturating_duration_since(t) >= policy.min_age)
        })
        .collect();
    unused.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then(a.names.cmp(&b.names)));
    let mut out = Vec::new();
    for i in unused {
        if need == 0 {
            break;
        }
        need = need.saturating_sub(i.size_bytes);
        out.push(i);
    }
    out
}

/// One collection: removes what [`choose`] picks and what only those images used.
/// Returns the images removed and the bytes freed (blobs younger than a minute stay for
/// a later collection: a pull in progress may be writing them).
pub async fn collect(
    store: &ArtifactStore,
    data_dir: &Path,
    policy: &Policy,
    in_use: &HashSet<String>,
) -> (usize, u64) {
    let Some((free, total)) = crate::node::disk_space(data_dir) else {
        return (0, 0);
    };
    let images = store.images().await;
    let doomed = choose(policy, (free, total), &images, in_use, Instant::now());
    if doomed.is_empty() {
        return (0, 0);
    }
    for image in &doomed {
        for name in &image.names {
            // Digest names (`repo@sha256:..`) are views of the same entry.
            if !name.contains('@')
                && let Err(e) = store.remove(name).await
            {
                tracing::warn!(image = %name, error = %e, "image not removed");
            }
        }
        tracing::info!(images = ?image.names, bytes = image.size_bytes, "image garbage-collected: the disk is past --image-gc-high-percent");
    }
    let blobs = match store.prune(Duration::from_secs(60)).await {
        Ok(r) => r.bytes,
        Err(e) => {
            tracing::warn!(error = %e, "image blobs not pruned");
            0
        }
    };
    let (_, layers) = store.prune_unpacked().await;
    (doomed.len(), blobs + layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, size: u64) -> CachedImage {
        CachedImage {
            names: vec![name.to_string()],
            size_bytes: size,
            last_used: None,
        }
    }

    #[test]
    fn only_unused_images_go_largest_first_down_to_the_low_mark() {
        let p = Policy::default();
        let images = [img("a", 30), img("b", 10), img("c", 50), img("d", 5)];
        let in_use: HashSet<String> = ["c".to_string()].into();
        let now = Instant::now();
        let names = |v: Vec<&CachedImage>| -> Vec<String> {
            v.iter().map(|i| i.names[0].clone()).collect()
        };
        // 84 % full: below the high mark, nothing.
        assert!(choose(&p, (16, 100), &images, &in_use, now).is_empty());
        // 90 % full: 10 bytes to free to reach 80 %; the largest unused (a, 30) does it.
        assert_eq!(names(choose(&p, (10, 100), &images, &in_use, now)), ["a"]);
        // 100 % full: 20 bytes; a (30) is enough.
        assert_eq!(names(choose(&p, (0, 100), &images, &in_use, now)), ["a"]);
        // 1000-byte disk, 95 % full: 150 bytes needed, all unused go, c stays.
        assert_eq!(
            names(choose(&p, (50, 1000), &images, &in_use, now)),
            ["a", "b", "d"]
        );
        // 100 % turns it off; an unknown disk size too.
        let off = Policy {
            high_percent: 100,
            ..p
        };
        assert!(choose(&off, (0, 100), &images, &in_use, now).is_empty());
        assert!(choose(&p, (0, 0), &images, &in_use, now).is_empty());
    }

    #[test]
    fn images_used_within_the_minimum_age_stay() {
        let p = Policy::default();
        let now = Instant::now() + Duration::from_secs(600);
        let mut images = [img("a", 30), img("b", 10)];
        // a was handed to a container a minute ago (pulled for a pod not yet in use).
        images[0].last_used = Some(now - Duration::from_secs(60));
        // b three minutes ago: older than the 2-minute minimum.
        images[1].last_used = Some(now - Duration::from_secs(180));
        let names: Vec<&str> = choose(&p, (0, 1000), &images, &HashSet::new(), now)
            .iter()
            .map(|i| i.names[0].as_str())
            .collect();
        assert_eq!(names, ["b"]);
        let none = Policy {
            min_age: Duration::ZERO,
            ..p
        };
        assert_eq!(
            choose(&none, (0, 1000), &images, &HashSet::new(), now).len(),
            2
        );
    }

    #[test]
    fn a_pods_images_are_normalized_as_the_store_names_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [{"name": "a", "image": "busybox"}],
                "initContainers": [{"name": "i", "image": "127.0.0.1:5000/x:1"}],
            }
        }))
        .unwrap_or_default();
        assert_eq!(
            images_of(&pod),
            ["docker.io/library/busybox:latest", "127.0.0.1:5000/x:1"]
        );
    }
}
