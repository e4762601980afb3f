//! AWS Signature Version 4, verified: the canonical request is rebuilt from
//! what arrived (method, path, query, the signed headers, the body's hash),
//! signed with the configured secret for the credential's scope, and
//! compared in constant time. Requests outside the clock-skew window are
//! refused whatever their signature.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

use super::error::ApiError;

/// AWS's window: a request dated more than 5 minutes away is refused.
pub const MAX_SKEW_SECS: i64 = 300;

/// What arrived, as the signature covers it.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
}

/// The parts of a valid `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

/// The access key the request claims, if it is well formed enough to say.
pub fn claimed_key(headers: &http::HeaderMap) -> Option<String> {
    parse_auth(headers).ok().map(|(c, ..)| c.access_key)
}

fn parse_auth(headers: &http::HeaderMap) -> Result<(Credential, Vec<String>, String), ApiError> {
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                401,
                "MissingAuthenticationToken",
                "Request is missing Authentication Token",
            )
        })?;
    let bad = || {
        ApiError::new(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials: malformed Authorization header",
        )
    };
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(bad)?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(bad)?;
        match k {
            "Credential" => cred = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => return Err(bad()),
        }
    }
    let (cred, signed, sig) = (
        cred.ok_or_else(bad)?,
        signed.ok_or_else(bad)?,
        sig.ok_or_else(bad)?,
    );
    let c: Vec<&str> = cred.split('/').collect();
    if c.len() != 5 || c[4] != "aws4_request" {
        return Err(bad());
    }
    Ok((
        Credential {
            access_key: c[0].into(),
            date: c[1].into(),
            region: c[2].into(),
            service: c[3].into(),
        },
        signed.split(';').map(str::to_string).collect(),
        sig.to_string(),
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex_sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// AWS's URI encoding: everything but unreserved characters, as %XX.
fn uri_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_query(q: &str) -> String {
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (uri_encode(&dec(k)), uri_encode(&dec(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The request's time, from `X-Amz-Date` (or `Date`).
fn request_time(headers: &http::HeaderMap) -> Result<(String, OffsetDateTime), ApiError> {
    let raw = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                401,
                "AuthFailure",
                "AWS was not able to validate the provided access credentials: no X-Amz-Date",
            )
        })?;
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = PrimitiveDateTime::parse(raw, fmt)
        .map_err(|_| ApiError::new(401, "AuthFailure", format!("malformed X-Amz-Date {raw:?}")))?
        .assume_utc();
    Ok((raw.to_string(), t))
}

/// What is signed: the canonical request's hash, with the time and scope.
fn string_to_sign(
    req: &Signed,
    signed_headers: &[String],
    payload: &str,
    amz_date: &str,
    cred: &Credential,
) -> String {
    let mut canonical_headers = String::new();
    for h in signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(h.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        canonical_headers.push_str(&format!("{h}:{}\n", values.join(",")));
    }
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        path,
        canonical_query(req.query),
        canonical_headers,
        signed_headers.join(";"),
        payload
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        cred.date, cred.region, cred.service
    );
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical.as_bytes())
    )
}

fn signing_key(secret: &str, cred: &Credential) -> Vec<u8> {
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), cred.date.as_bytes());
    for part in [cred.region.as_str(), cred.service.as_str(), "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    key
}

/// Signs a form POST to `/` of `host` as an AWS SDK does (for sg's own
/// clients: the bench): the headers to send, `Authorization` among them.
pub fn sign(
    host: &str,
    body: &[u8],
    cred: &Credential,
    secret: &str,
    now: OffsetDateTime,
) -> http::HeaderMap {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    let amz_date = now.format(fmt).expect("a UTC time formats");
    let cred = Credential {
        date: amz_date[..8].to_string(),
        ..cred.clone()
    };
    let mut h = http::HeaderMap::new();
    let mut put = |k: &'static str, v: &str| {
        h.insert(k, http::HeaderValue::from_str(v).expect("a header value"));
    };
    put("host", host);
    put(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    );
    put("x-amz-date", &amz_date);
    let signed: Vec<String> = ["content-type", "host", "x-amz-date"]
        .map(String::from)
        .to_vec();
    let req = Signed {
        method: "POST",
        path: "/",
        query: "",
        headers: &h,
        body,
    };
    let to_sign = string_to_sign(&req, &signed, &hex_sha256(body), &amz_date, &cred);
    let sig = hex::encode(hmac(&signing_key(secret, &cred), to_sign.as_bytes()));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={sig}",
        cred.access_key,
        cred.date,
        cred.region,
        cred.service,
        signed.join(";")
    );
    h.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&auth).expect("ASCII"),
    );
    h
}

/// Verifies `req` against `secret_of` (access key → secret). Returns the
/// credential; the errors are AWS's.
pub fn verify(
    req: &Signed,
    secret_of: impl Fn(&str) -> Option<String>,
    now: OffsetDateTime,
) -> Result<Credential, ApiError> {
    let (cred, signed_headers, signature) = parse_auth(req.headers)?;
    let (amz_date, t) = request_time(req.headers)?;
    if (now - t).whole_seconds().abs() > MAX_SKEW_SECS {
        return Err(ApiError::client(
            "RequestExpired",
            format!(
                "Request has expired: it is dated {amz_date}, more than {MAX_SKEW_SECS} s from the server's clock"
            ),
        ));
    }
    let Some(secret) = secret_of(&cred.access_key) else {
        return Err(ApiError::new(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ));
    };
    if !amz_date.starts_with(&cred.date) {
        return Err(ApiError::new(
            403,
            "SignatureDoesNotMatch",
            "the credential's date is not the request's date",
        ));
    }
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(ApiError::new(
            403,
            "SignatureDoesNotMatch",
            "the signature must cover the Host header",
        ));
    }
    let payload = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .unwrap_or_else(|| hex_sha256(req.body));
    if payload != hex_sha256(req.body) && payload != "UNSIGNED-PAYLOAD" {
        return Err(ApiError::new(
            403,
            "SignatureDoesNotMatch",
            "the body's hash is not the signed one",
        ));
    }
    let to_sign = string_to_sign(req, &signed_headers, &payload, &amz_date, &cred);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&signing_key(&secret, &cred))
        .expect("HMAC takes any key");
    mac.update(to_sign.as_bytes());
    let given = hex::decode(&signature).unwrap_or_default();
    mac.verify_slice(&given).map_err(|_| {
        ApiError::new(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        )
    })?;
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example (the `get-vanilla-query` case of the SigV4
    /// test suite, IAM ListUsers): the signature must verify, and fail with
    /// any other secret, date or body.
    #[test]
    fn verifies_the_aws_test_vector_and_nothing_else() {
        let mut h = http::HeaderMap::new();
        h.insert("host", "iam.amazonaws.com".parse().unwrap());
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        h.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
                .parse()
                .unwrap(),
        );
        let req = Signed {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &h,
            body: b"",
        };
        let at = PrimitiveDateTime::parse(
            "20150830T123700Z",
            format_description!("[year][month][day]T[hour][minute][second]Z"),
        )
        .unwrap()
        .assume_utc();
        let secret = |k: &str| {
            (k == "AKIDEXAMPLE").then(|| "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string())
        };
        let c = verify(&req, secret, at).unwrap();
        assert_eq!(
            (c.region.as_str(), c.service.as_str()),
            ("us-east-1", "iam")
        );
        let wrong = |_: &str| Some("not-the-secret".to_string());
        assert_eq!(
            verify(&req, wrong, at).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        assert_eq!(verify(&req, |_| None, at).unwrap_err().code, "AuthFailure");
        let late = at + time::Duration::minutes(10);
        assert_eq!(
            verify(&req, secret, late).unwrap_err().code,
            "RequestExpired"
        );
        let tampered = Signed { body: b"x", ..req };
        assert_eq!(
            verify(&tampered, secret, at).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn what_sign_signs_verifies() {
        let now = OffsetDateTime::now_utc();
        let cred = Credential {
            access_key: "AKID".into(),
            date: String::new(),
            region: "eu-west-1".into(),
            service: "ec2".into(),
        };
        let body = b"Action=DescribeVpcs&Version=2016-11-15";
        let h = sign("127.0.0.1:8733", body, &cred, "s3cr3t-s3cr3t-s3cr3t", now);
        let req = Signed {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body,
        };
        let got = verify(&req, |_| Some("s3cr3t-s3cr3t-s3cr3t".into()), now).unwrap();
        assert_eq!(got.region, "eu-west-1");
        assert!(verify(&req, |_| Some("another-secret-000".into()), now).is_err());
    }
}
