//! The arithmetic of a rolling update, pure: how far `maxSurge` lets the new ReplicaSet
//! grow and how far `maxUnavailable` lets the old ones shrink.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A `maxSurge`/`maxUnavailable` value that is neither a number nor a percentage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    /// Not `N` or `N%`.
    #[error("invalid value {0:?}: must be an integer or a percentage")]
    Invalid(String),
}

/// Resolve an int-or-percent against `total`; percentages round up or down.
pub fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool) -> Result<i32, RolloutError> {
    match v {
        None => Ok(0),
        Some(IntOrString::Int(n)) => Ok(*n),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| RolloutError::Invalid(s.clone()))?;
            let num = pct * i64::from(total);
            let v = if round_up {
                (num + 99).div_euclid(100)
            } else {
                num.div_euclid(100)
            };
            i32::try_from(v).map_err(|_| RolloutError::Invalid(s.clone()))
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `replicas`: surge rounds up, unavailability rounds
/// down, and if both come to zero one pod may be unavailable, so a rollout can always
/// move.
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> Result<(i32, i32), RolloutError> {
    let surge = scaled(max_surge, replicas, true)?.max(0);
    let mut unavailable = scaled(max_unavailable, replicas, false)?.max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// The size the new ReplicaSet may grow to now: all pods (every ReplicaSet's
/// `spec.replicas`, `total`) stay within `replicas + surge`, and the new one never
/// exceeds `replicas`.
pub fn new_replicas(replicas: i32, surge: i32, total: i32, new_current: i32) -> i32 {
    if new_current >= replicas {
        return replicas;
    }
    let room = (replicas + surge - total).max(0);
    new_current + room.min(replicas - new_current)
}

/// An old ReplicaSet as the scale-down plan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Old {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// New sizes of the old ReplicaSets (given oldest first) so that at least
/// `replicas - unavailable` pods stay available: first drop their pods that are not
/// available anyway, then available ones, as far as the new ReplicaSet's available
/// pods make up for them.
pub fn scale_down_old(
    old: &[Old],
    new_replicas: i32,
    new_available: i32,
    replicas: i32,
    unavailable: i32,
) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|o| o.replicas).collect();
    let old_total: i32 = sizes.iter().sum();
    if old_total == 0 {
        return sizes;
    }
    let all = old_total + new_replicas;
    let min_available = replicas - unavailable;
    let new_unavailable = (new_replicas - new_available).max(0);
    let mut budget = all - min_available - new_unavailable;
    if budget <= 0 {
        return sizes;
    }
    // Unhealthy old pods cost no availability.
    for (size, o) in sizes.iter_mut().zip(old) {
        if budget == 0 {
            break;
        }
        let unhealthy = (*size - o.available.min(*size)).max(0);
        let cut = unhealthy.min(budget);
        *size -= cut;
        budget -= cut;
    }
    // Available ones, as long as enough stay available overall.
    let available: i32 = old
        .iter()
        .zip(&sizes)
        .map(|(o, s)| o.available.min(*s))
        .sum::<i32>()
        + new_available;
    let mut spare = (available - min_available).max(0);
    for size in &mut sizes {
        if spare == 0 {
            break;
        }
        let cut = (*size).min(spare);
        *size -= cut;
        spare -= cut;
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn fenceposts_round_like_kubernetes() {
        let i = IntOrString::Int;
        let cases = [
            // surge, unavailable, replicas -> (surge, unavailable)
            (Some(s("25%")), Some(s("25%")), 4, (1, 1)),
            (Some(s("25%")), Some(s("25%")), 1, (1, 0)),
            (Some(s("25%")), Some(s("25%")), 10, (3, 2)),
            (Some(i(0)), Some(i(0)), 3, (0, 1)),
            (Some(i(2)), Some(i(1)), 3, (2, 1)),
            (Some(s("0%")), Some(s("50%")), 3, (0, 1)),
            (None, None, 2, (0, 1)),
        ];
        for (surge, unav, replicas, want) in cases {
            assert_eq!(
                fenceposts(surge.as_ref(), unav.as_ref(), replicas),
                Ok(want),
                "{surge:?} {unav:?} {replicas}"
            );
        }
        assert!(fenceposts(Some(&s("x%")), None, 3).is_err());
        assert!(fenceposts(Some(&s("10")), None, 3).is_err());
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        // replicas, surge, total, new now -> new size
        let cases = [
            (3, 1, 3, 0, 1),
            (3, 1, 4, 1, 1),
            (3, 1, 3, 1, 2),
            (3, 0, 3, 0, 0),
            (3, 0, 2, 0, 1),
            (3, 5, 3, 0, 3),
            (3, 1, 3, 5, 3),
        ];
        for (replicas, surge, total, now, want) in cases {
            assert_eq!(
                new_replicas(replicas, surge, total, now),
                want,
                "{replicas} {surge} {total} {now}"
            );
        }
    }

    #[test]
    fn old_replica_sets_shrink_within_max_unavailable() {
        let o = |replicas, available| Old {
            replicas,
            available,
        };
        // old, new replicas, new available, replicas, maxUnavailable -> sizes
        type Case = (Vec<Old>, i32, i32, i32, i32, Vec<i32>);
        let cases: Vec<Case> = vec![
            // Surge 1, nothing new available yet: nothing may go.
            (vec![o(3, 3)], 1, 0, 3, 0, vec![3]),
            // The new pod is available: one old one may go.
            (vec![o(3, 3)], 1, 1, 3, 0, vec![2]),
            // maxUnavailable 1, no surge: one old may go before anything new exists.
            (vec![o(3, 3)], 0, 0, 3, 1, vec![2]),
            // Unavailable old pods go first, without spending availability.
            (vec![o(3, 1)], 1, 1, 3, 0, vec![2]),
            // While the new pod is not available either, nothing goes.
            (vec![o(3, 1)], 1, 0, 3, 0, vec![3]),
            // Oldest first across several old sets.
            (vec![o(2, 2), o(2, 2)], 3, 3, 4, 1, vec![0, 0]),
            (vec![o(2, 2), o(2, 2)], 1, 1, 4, 1, vec![0, 2]),
            (vec![o(0, 0)], 3, 3, 3, 1, vec![0]),
        ];
        for (old, nr, na, replicas, unav, want) in cases {
            assert_eq!(
                scale_down_old(&old, nr, na, replicas, unav),
                want,
                "{old:?} new {nr}/{na} replicas {replicas} unavailable {unav}"
            );
        }
    }
}
