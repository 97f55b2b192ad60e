//! Label and field selectors, parsed from their query-string forms.

use crate::error::{ApiError, ApiResult};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

fn split_top(s: &str) -> Vec<&str> {
    // Commas inside `( )` belong to a set.
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn bad(kind: &str, s: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {kind} {s:?}: {why}"))
}

impl LabelSelector {
    /// Parse Kubernetes' selector syntax (`a=b,c!=d,e in (x,y),!f`).
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad("label selector", s, "empty requirement"));
            }
            let key_ok = |k: &str| {
                if k.is_empty() || !crate::validation::qualified_name(k).is_empty() {
                    Err(bad(
                        "label selector",
                        s,
                        &format!("invalid label key {k:?}"),
                    ))
                } else {
                    Ok(k.to_string())
                }
            };
            let set = |rest: &str| -> ApiResult<Vec<String>> {
                let r = rest.trim();
                let inner = r
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| bad("label selector", s, "expected a set in parentheses"))?;
                Ok(inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect())
            };
            if let Some(k) = p.strip_prefix('!') {
                reqs.push(Req::NotExists(key_ok(k.trim())?));
            } else if let Some((k, v)) = p.split_once("!=") {
                reqs.push(Req::Ne(key_ok(k.trim())?, v.trim().to_string()));
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                reqs.push(Req::Eq(key_ok(k.trim())?, v.trim().to_string()));
            } else if let Some(i) = p.find(" notin ") {
                reqs.push(Req::NotIn(key_ok(p[..i].trim())?, set(&p[i + 7..])?));
            } else if let Some(i) = p.find(" in ") {
                reqs.push(Req::In(key_ok(p[..i].trim())?, set(&p[i + 4..])?));
            } else {
                reqs.push(Req::Exists(key_ok(p)?));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// From a structured `LabelSelector` object (matchLabels / matchExpressions).
    pub fn from_object(sel: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
            reqs.push(Req::Eq(
                k.clone(),
                v.as_str().unwrap_or_default().to_string(),
            ));
        }
        for e in sel["matchExpressions"].as_array().into_iter().flatten() {
            let key = e["key"].as_str().unwrap_or_default().to_string();
            let vals: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            reqs.push(match e["operator"].as_str() {
                Some("In") => Req::In(key, vals),
                Some("NotIn") => Req::NotIn(key, vals),
                Some("Exists") => Req::Exists(key),
                _ => Req::NotExists(key),
            });
        }
        LabelSelector(reqs)
    }

    /// Whether no requirement is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector` (`=`, `==` and `!=` on supported fields).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

fn supported_field(kind: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match kind {
        "Pod" => matches!(
            field,
            "spec.nodeName"
                | "status.phase"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        "Event" => {
            field.starts_with("involvedObject.")
                || matches!(field, "reason" | "type" | "source" | "reportingComponent")
        }
        "Secret" => field == "type",
        "Node" => field == "spec.unschedulable",
        "Namespace" => field == "status.phase",
        "ReplicaSet" | "Job" => field == "status.replicas" || field == "status.successful",
        _ => false,
    }
}

impl FieldSelector {
    /// Parse for a kind; unsupported fields are refused as Kubernetes does.
    pub fn parse(kind: &str, s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_field(kind, field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether no requirement is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `metadata.name` this selector pins, if any.
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether an object satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let mut v = obj;
            for seg in field.split('.') {
                v = &v[seg];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let l = json!({"app": "web", "tier": "front"});
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("app=web,tier=back", false),
            ("", true),
        ];
        for (s, want) in cases {
            assert_eq!(LabelSelector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(LabelSelector::parse("bad key=x").is_err());
    }

    #[test]
    fn field_selector_forms() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("Pod", "spec.nodeName=n1")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("Pod", "spec.nodeName!=")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            !FieldSelector::parse("Pod", "status.phase=Pending")
                .unwrap()
                .matches(&pod)
        );
        assert_eq!(
            FieldSelector::parse("Pod", "metadata.name=a")
                .unwrap()
                .name(),
            Some("a")
        );
        assert!(FieldSelector::parse("Pod", "spec.bogus=1").is_err());
        let unscheduled = json!({"metadata": {"name": "b"}, "spec": {}});
        assert!(
            FieldSelector::parse("Pod", "spec.nodeName=")
                .unwrap()
                .matches(&unscheduled)
        );
    }
}
