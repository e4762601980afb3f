//! The EC2 Query protocol, driven by AWS's own shapes (`model.json`,
//! extracted from botocore by `cargo xtask api-model`): a request's form
//! parameters (`IpPermissions.1.IpRanges.1.CidrIp`, `Filter.1.Value.1`)
//! become a JSON value keyed by the model's member names, and a response
//! value becomes EC2's XML (`<securityGroupInfo><item>…`). Names, list
//! serialisation and element names are never retyped by hand.

use std::{
    collections::{BTreeMap, HashMap},
    sync::OnceLock,
};

use quick_xml::{
    Writer,
    events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event},
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

pub const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
pub const VERSION: &str = "2016-11-15";
/// Parameters per request, and dots per parameter name: far above what any
/// real call sends, low enough that a hostile body costs little.
pub const MAX_PARAMS: usize = 20_000;
const MAX_DEPTH: usize = 8;

#[derive(Deserialize)]
struct ModelFile {
    operations: HashMap<String, Op>,
    shapes: HashMap<String, Shape>,
}

#[derive(Deserialize)]
struct Op {
    input: Option<String>,
    output: Option<String>,
}

#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    members: BTreeMap<String, MemberRef>,
    member: Option<MemberRef>,
    #[serde(default)]
    required: Vec<String>,
}

#[derive(Deserialize)]
struct MemberRef {
    shape: String,
    #[serde(rename = "locationName")]
    location_name: Option<String>,
    #[serde(rename = "queryName")]
    query_name: Option<String>,
}

fn model() -> &'static ModelFile {
    static MODEL: OnceLock<ModelFile> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut m: ModelFile = serde_json::from_str(include_str!("model.json"))
            .expect("the embedded API model parses");
        let sg: ModelFile = serde_json::from_str(include_str!("sg-model.json"))
            .expect("sg's own actions' model parses");
        m.operations.extend(sg.operations);
        m.shapes.extend(sg.shapes);
        m
    })
}

/// Whether the EC2 action is one sg serves.
pub fn served(action: &str) -> bool {
    model().operations.contains_key(action)
}

impl MemberRef {
    /// How EC2's query serialiser names a member in a request.
    fn query_key(&self, name: &str) -> String {
        if let Some(q) = &self.query_name {
            return q.clone();
        }
        match &self.location_name {
            Some(l) => {
                let mut c = l.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            }
            None => name.to_string(),
        }
    }
}

#[derive(Default)]
struct Node {
    value: Option<String>,
    children: BTreeMap<String, Node>,
}

/// The request parameters of `action` as a value keyed by member names,
/// with AWS's errors for unknown, malformed and missing parameters.
pub fn decode(action: &str, params: &[(String, String)]) -> ApiResult<Value> {
    let m = model();
    let Some(input) = m.operations.get(action).and_then(|o| o.input.as_deref()) else {
        return Ok(Value::Object(Map::new()));
    };
    let mut root = Node::default();
    for (k, v) in params {
        if k == "Action" || k == "Version" {
            continue;
        }
        let parts: Vec<&str> = k.split('.').collect();
        if parts.len() > MAX_DEPTH || parts.iter().any(|p| p.is_empty()) {
            return Err(unknown(k));
        }
        let mut n = &mut root;
        for p in parts {
            n = n.children.entry(p.to_string()).or_default();
        }
        if n.value.replace(v.clone()).is_some() {
            return Err(ApiError::invalid(format!(
                "The parameter {k} is given twice"
            )));
        }
    }
    decode_shape(input, &root, "")
}

fn unknown(path: &str) -> ApiError {
    ApiError::client(
        "UnknownParameter",
        format!("The parameter {path} is not recognized"),
    )
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn decode_shape(name: &str, node: &Node, path: &str) -> ApiResult<Value> {
    let shape = &model().shapes[name];
    match shape.ty.as_str() {
        "structure" => {
            if node.value.is_some() && !path.is_empty() {
                return Err(ApiError::invalid(format!(
                    "The parameter {path} is a structure: give its members ({path}.Name)"
                )));
            }
            let mut out = Map::new();
            for (k, child) in &node.children {
                let Some((mname, mref)) = shape.members.iter().find(|(n, r)| r.query_key(n) == *k)
                else {
                    return Err(unknown(&join(path, k)));
                };
                out.insert(
                    mname.clone(),
                    decode_shape(&mref.shape, child, &join(path, k))?,
                );
            }
            for r in &shape.required {
                if !out.contains_key(r) {
                    let key = shape.members.get(r).map_or(r.clone(), |m| m.query_key(r));
                    return Err(ApiError::missing(&join(path, &key)));
                }
            }
            Ok(Value::Object(out))
        }
        "list" => {
            if node.value.is_some() {
                return Err(ApiError::invalid(format!(
                    "The parameter {path} is a list: give {path}.1, {path}.2, ..."
                )));
            }
            let member = shape.member.as_ref().expect("a list has a member");
            let mut items = Vec::new();
            for (k, child) in &node.children {
                let Some(i) = k.parse::<u32>().ok().filter(|i| *i >= 1) else {
                    return Err(unknown(&join(path, k)));
                };
                items.push((i, decode_shape(&member.shape, child, &join(path, k))?));
            }
            items.sort_by_key(|(i, _)| *i);
            Ok(Value::Array(items.into_iter().map(|(_, v)| v).collect()))
        }
        ty => {
            if let Some(k) = node.children.keys().next() {
                return Err(unknown(&join(path, k)));
            }
            let s = node.value.clone().unwrap_or_default();
            let bad = || ApiError::invalid(format!("Invalid value {s:?} for {path}"));
            Ok(match ty {
                "integer" | "long" => Value::from(s.trim().parse::<i64>().map_err(|_| bad())?),
                "boolean" => match s.to_ascii_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => return Err(bad()),
                },
                "double" | "float" => {
                    let f = s.trim().parse::<f64>().map_err(|_| bad())?;
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(bad)?
                }
                _ => Value::String(s),
            })
        }
    }
}

/// `action`'s response document for `value` (keyed by member names). A
/// member the model does not have is a bug in sg, reported as such.
pub fn encode(action: &str, value: &Value, request_id: &str) -> ApiResult<String> {
    let m = model();
    let op = m
        .operations
        .get(action)
        .ok_or_else(|| ApiError::internal(format!("no shape for {action}")))?;
    let mut w = Writer::new(Vec::new());
    let root = format!("{action}Response");
    let io = |e: std::io::Error| ApiError::internal(e.to_string());
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(io)?;
    w.write_event(Event::Start(
        BytesStart::new(root.as_str()).with_attributes([("xmlns", XMLNS)]),
    ))
    .map_err(io)?;
    text(&mut w, "requestId", request_id)?;
    match &op.output {
        Some(out) => members(&mut w, out, value)?,
        // Actions without an output shape still answer `return`, as EC2 does.
        None => text(&mut w, "return", "true")?,
    }
    w.write_event(Event::End(BytesEnd::new(root.as_str())))
        .map_err(io)?;
    String::from_utf8(w.into_inner()).map_err(|e| ApiError::internal(e.to_string()))
}

/// One element of `shape` as XML, for answers assembled from pieces.
pub fn fragment(element_name: &str, shape: &str, value: &Value) -> ApiResult<String> {
    let mut w = Writer::new(Vec::new());
    element(&mut w, element_name, shape, value)?;
    String::from_utf8(w.into_inner()).map_err(|e| ApiError::internal(e.to_string()))
}

/// `action`'s answer with the list member `list` made of XML `items`
/// (made by [`fragment`]) and the other members from `rest`.
pub fn encode_items(
    action: &str,
    list: &str,
    items: &[std::sync::Arc<str>],
    rest: &Value,
    request_id: &str,
) -> ApiResult<String> {
    let m = model();
    let out = m
        .operations
        .get(action)
        .and_then(|o| o.output.as_deref())
        .ok_or_else(|| ApiError::internal(format!("no output shape for {action}")))?;
    let mref = m.shapes[out]
        .members
        .get(list)
        .ok_or_else(|| ApiError::internal(format!("{out} has no member {list}")))?;
    let name = mref.location_name.as_deref().unwrap_or(list);
    let mut doc = encode(action, rest, request_id)?;
    let close = format!("</{action}Response>");
    let at = doc
        .rfind(&close)
        .ok_or_else(|| ApiError::internal("no root end"))?;
    let mut body = format!("<{name}>");
    for i in items {
        body.push_str(i);
    }
    body.push_str(&format!("</{name}>"));
    doc.insert_str(at, &body);
    Ok(doc)
}

fn text(w: &mut Writer<Vec<u8>>, name: &str, s: &str) -> ApiResult<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(s))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(())
}

fn members(w: &mut Writer<Vec<u8>>, shape_name: &str, value: &Value) -> ApiResult<()> {
    let shape = &model().shapes[shape_name];
    let Value::Object(obj) = value else {
        return Err(ApiError::internal(format!(
            "{shape_name} must be an object"
        )));
    };
    for k in obj.keys() {
        if !shape.members.contains_key(k) {
            return Err(ApiError::internal(format!(
                "{shape_name} has no member {k}"
            )));
        }
    }
    for (name, mref) in &shape.members {
        if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
            element(
                w,
                mref.location_name.as_deref().unwrap_or(name),
                &mref.shape,
                v,
            )?;
        }
    }
    Ok(())
}

fn element(w: &mut Writer<Vec<u8>>, name: &str, shape_name: &str, v: &Value) -> ApiResult<()> {
    let shape = &model().shapes[shape_name];
    let io = |e: std::io::Error| ApiError::internal(e.to_string());
    match shape.ty.as_str() {
        "structure" => {
            w.write_event(Event::Start(BytesStart::new(name)))
                .map_err(io)?;
            members(w, shape_name, v)?;
            w.write_event(Event::End(BytesEnd::new(name))).map_err(io)?;
        }
        "list" => {
            let member = shape.member.as_ref().expect("a list has a member");
            let item = member.location_name.as_deref().unwrap_or("item");
            let Value::Array(items) = v else {
                return Err(ApiError::internal(format!("{shape_name} must be a list")));
            };
            w.write_event(Event::Start(BytesStart::new(name)))
                .map_err(io)?;
            for x in items {
                element(w, item, &member.shape, x)?;
            }
            w.write_event(Event::End(BytesEnd::new(name))).map_err(io)?;
        }
        _ => {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text(w, name, &s)?;
        }
    }
    Ok(())
}

/// AWS's error document.
pub fn error_xml(e: &ApiError, request_id: &str) -> String {
    let mut w = Writer::new(Vec::new());
    let _ = w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let _ = w.create_element("Response").write_inner_content(|w| {
        w.create_element("Errors").write_inner_content(|w| {
            w.create_element("Error").write_inner_content(|w| {
                w.create_element("Code")
                    .write_text_content(BytesText::new(&e.code))?;
                w.create_element("Message")
                    .write_text_content(BytesText::new(&e.message))?;
                Ok(())
            })?;
            Ok(())
        })?;
        w.create_element("RequestID")
            .write_text_content(BytesText::new(request_id))?;
        Ok(())
    });
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decodes_lists_and_renamed_members_as_the_model_says() {
        let v = decode(
            "AuthorizeSecurityGroupIngress",
            &p(&[
                ("GroupId", "sg-0123456789abcdef0"),
                ("IpPermissions.1.IpProtocol", "tcp"),
                ("IpPermissions.1.FromPort", "22"),
                ("IpPermissions.1.ToPort", "22"),
                ("IpPermissions.1.IpRanges.2.CidrIp", "10.0.0.0/8"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "10.1.0.0/16"),
                ("IpPermissions.1.Groups.1.GroupId", "sg-1"),
            ]),
        )
        .unwrap();
        let perm = &v["IpPermissions"][0];
        assert_eq!(perm["FromPort"], 22);
        assert_eq!(perm["IpRanges"][0]["CidrIp"], "10.1.0.0/16");
        assert_eq!(perm["UserIdGroupPairs"][0]["GroupId"], "sg-1");
        let rules: Vec<crate::model::input::RawRule> =
            serde_json::from_value(v["IpPermissions"].clone()).unwrap();
        assert_eq!(rules[0].ip_ranges.len(), 2);
    }

    #[test]
    fn refuses_unknown_malformed_and_missing_parameters() {
        let code = |kv: &[(&str, &str)]| decode("CreateSecurityGroup", &p(kv)).unwrap_err().code;
        assert_eq!(
            code(&[
                ("GroupName", "a"),
                ("GroupDescription", "b"),
                ("Bogus", "1")
            ]),
            "UnknownParameter"
        );
        assert_eq!(code(&[("GroupName", "a")]), "MissingParameter");
        assert_eq!(
            code(&[
                ("GroupName", "a"),
                ("GroupDescription", "b"),
                ("DryRun", "maybe")
            ]),
            "InvalidParameterValue"
        );
        assert_eq!(
            code(&[
                ("GroupName", "a"),
                ("GroupDescription", "b"),
                ("TagSpecification.x.ResourceType", "y")
            ]),
            "UnknownParameter"
        );
        assert_eq!(
            code(&[("GroupName.1", "a"), ("GroupDescription", "b")]),
            "UnknownParameter"
        );
    }

    #[test]
    fn fuzzed_bodies_get_aws_errors_never_a_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let atoms = [
            "IpPermissions",
            "1",
            "0",
            "IpRanges",
            "CidrIp",
            "Groups",
            "GroupId",
            "Filter",
            "Value",
            "",
            "99999999999",
            "FromPort",
            "Tag",
            "TagSpecification",
        ];
        for action in [
            "AuthorizeSecurityGroupIngress",
            "DescribeSecurityGroups",
            "CreateSecurityGroup",
            "ModifySecurityGroupRules",
            "CreateTags",
        ] {
            for _ in 0..3000 {
                let n = rng.random_range(0..6);
                let params: Vec<(String, String)> = (0..n)
                    .map(|_| {
                        let depth = rng.random_range(1..7);
                        let k: Vec<&str> = (0..depth)
                            .map(|_| atoms[rng.random_range(0..atoms.len())])
                            .collect();
                        (
                            k.join("."),
                            ["x", "1", "-1", "true", "\u{0}"][rng.random_range(0..5)].to_string(),
                        )
                    })
                    .collect();
                if let Err(e) = decode(action, &params) {
                    assert!(
                        [
                            "UnknownParameter",
                            "InvalidParameterValue",
                            "MissingParameter"
                        ]
                        .contains(&e.code.as_str()),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn encodes_with_the_models_element_names() {
        let v = serde_json::json!({"SecurityGroups": [{"GroupId": "sg-1", "Tags": [{"Key": "k", "Value": "<v>"}], "IpPermissions": []}]});
        let x = encode("DescribeSecurityGroups", &v, "r-1").unwrap();
        assert!(x.contains("<securityGroupInfo><item><groupId>sg-1</groupId><ipPermissions></ipPermissions><tagSet><item><key>k</key><value>&lt;v&gt;</value></item></tagSet></item></securityGroupInfo>"), "{x}");
        let bad = serde_json::json!({"SecurityGroups": [{"GroupIdd": "sg-1"}]});
        assert_eq!(
            encode("DescribeSecurityGroups", &bad, "r")
                .unwrap_err()
                .code,
            "InternalError"
        );
    }
}
