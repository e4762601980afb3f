//! `Filter.N.Name` / `Filter.N.Value.M` as EC2 applies them: a resource
//! matches when, for every filter, one of its values for the name matches
//! one of the filter's values (`*` and `?` are wildcards); and the
//! `MaxResults`/`NextToken` pages, only when asked.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Filter {
    pub name: Option<String>,
    #[serde(default)]
    pub values: Vec<String>,
}

/// What a resource answers for a filter name (`NAMES`, and the tag
/// filters every kind has).
pub trait Filterable {
    const NAMES: &'static [&'static str];
    fn values(&self, name: &str) -> Vec<String>;
    fn tags(&self) -> &BTreeMap<String, String>;
}

/// `tag:Key`, `tag-key`, `tag-value`: the same for every kind.
fn tag_values(t: &BTreeMap<String, String>, name: &str) -> Option<Vec<String>> {
    if let Some(k) = name.strip_prefix("tag:") {
        return Some(t.get(k).cloned().into_iter().collect());
    }
    match name {
        "tag-key" => Some(t.keys().cloned().collect()),
        "tag-value" => Some(t.values().cloned().collect()),
        _ => None,
    }
}

fn wildcard(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    // Iterative glob: `*` any run, `?` one character.
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Checks every filter's name up front (an unknown one is AWS's
/// `InvalidParameterValue`), then keeps what matches.
pub fn apply<'a, T: Filterable>(items: Vec<&'a T>, filters: &[Filter]) -> ApiResult<Vec<&'a T>> {
    let none = BTreeMap::new();
    for f in filters {
        let name = f
            .name
            .as_deref()
            .ok_or_else(|| ApiError::missing("Filter.N.Name"))?;
        if !T::NAMES.contains(&name) && tag_values(&none, name).is_none() {
            return Err(ApiError::invalid(format!("The filter '{name}' is invalid")));
        }
    }
    Ok(items
        .into_iter()
        .filter(|it| {
            filters.iter().all(|f| {
                let name = f.name.as_deref().unwrap_or_default();
                let have = tag_values(it.tags(), name).unwrap_or_else(|| it.values(name));
                have.iter().any(|h| f.values.iter().any(|v| wildcard(v, h)))
            })
        })
        .collect())
}

/// One page of `items` when the request gives `MaxResults` (within
/// `bounds`), from its `NextToken`, with the token of the next; everything
/// otherwise.
pub fn page<T: Clone>(
    items: Vec<T>,
    params: &Value,
    bounds: (i64, i64),
) -> ApiResult<(Vec<T>, Option<String>)> {
    let max = params.get("MaxResults").and_then(Value::as_i64);
    let token = params.get("NextToken").and_then(Value::as_str);
    let start = match token {
        None => 0,
        Some(t) => t
            .strip_prefix("sg-page-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| {
                ApiError::client("InvalidNextToken", format!("The token {t:?} is invalid"))
            })?,
    };
    let Some(max) = max else {
        return Ok((items[start..].to_vec(), None));
    };
    if !(bounds.0..=bounds.1).contains(&max) {
        return Err(ApiError::invalid(format!(
            "MaxResults {max} is outside {}-{}",
            bounds.0, bounds.1
        )));
    }
    let end = (start + max as usize).min(items.len());
    let next = (end < items.len()).then(|| format!("sg-page-{end}"));
    Ok((items[start..end].to_vec(), next))
}

/// The `Filters` member of a decoded request.
pub fn of(params: &Value) -> ApiResult<Vec<Filter>> {
    serde_json::from_value(
        params
            .get("Filters")
            .cloned()
            .unwrap_or(Value::Array(vec![])),
    )
    .map_err(|e| ApiError::invalid(format!("Filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_ec2s_do() {
        assert!(wildcard("web*", "web-1"));
        assert!(wildcard("*", ""));
        assert!(wildcard("w?b", "web"));
        assert!(!wildcard("web", "web-1"));
        assert!(wildcard("*-1", "web-1"));
        assert!(!wildcard("a*b", "acbd"));
    }

    #[test]
    fn pages_only_when_asked() {
        use serde_json::json;
        let v: Vec<u32> = (0..12).collect();
        assert_eq!(page(v.clone(), &json!({}), (5, 1000)).unwrap().0.len(), 12);
        let (p1, t) = page(v.clone(), &json!({"MaxResults": 5}), (5, 1000)).unwrap();
        assert_eq!((p1.len(), t.as_deref()), (5, Some("sg-page-5")));
        let ten = json!({"MaxResults": 5, "NextToken": "sg-page-10"});
        let (p3, t3) = page(v.clone(), &ten, (5, 1000)).unwrap();
        assert_eq!((p3, t3), (vec![10, 11], None));
        assert_eq!(
            page(v.clone(), &json!({"MaxResults": 2}), (5, 1000))
                .unwrap_err()
                .code,
            "InvalidParameterValue"
        );
        assert_eq!(
            page(
                v,
                &json!({"MaxResults": 5, "NextToken": "bogus"}),
                (5, 1000)
            )
            .unwrap_err()
            .code,
            "InvalidNextToken"
        );
    }
}
