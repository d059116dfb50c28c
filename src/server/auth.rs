//! Who is asking, for a request on TCP: AWS Signature Version 4 over the
//! access keys kept in the keystore. The signature is computed again with the
//! AWS SDK's own signer (`aws-sigv4`) over exactly the headers the client
//! signed, and compared in constant time (`crypto::constant_time_eq`). The
//! headers are checked first (`precheck`), before the body is read. Refusals carry the AWS exception
//! names; nothing here logs or returns a secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::HeaderMap;

use super::error::ApiError;
use crate::kms::{AccessKeySecret, Caller, LocalKeyStore, clock};

/// How far a request's X-Amz-Date may be from the server's clock (as AWS).
pub const MAX_SKEW: Duration = Duration::from_secs(300);

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The headers a request must have signed: without them a signed request
/// could be replayed against another operation or host.
const REQUIRED_SIGNED: [&str; 3] = ["host", "x-amz-date", "x-amz-target"];

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

/// A request whose signature header was checked before its body is read
/// (a known access key, a date within `MAX_SKEW`, the required headers
/// signed): what is left is the signature over the body (`verify`).
pub(crate) struct Presigned {
    access_key_id: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    signed_at: i64,
    secret: AccessKeySecret,
}

fn incomplete(why: &str) -> ApiError {
    ApiError::new("IncompleteSignatureException", 400, why.to_string())
}

fn parse_authorization(v: &str) -> Result<Authorization<'_>, ApiError> {
    let rest = v
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            incomplete("Authorization header must use the AWS4-HMAC-SHA256 algorithm")
        })?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(x) = part.strip_prefix("Credential=") {
            cred = Some(x);
        } else if let Some(x) = part.strip_prefix("SignedHeaders=") {
            signed = Some(x);
        } else if let Some(x) = part.strip_prefix("Signature=") {
            sig = Some(x);
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err(incomplete(
            "Authorization header requires Credential, SignedHeaders and Signature",
        ));
    };
    let c: Vec<&str> = cred.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = c[..] else {
        return Err(incomplete(
            "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request",
        ));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature: sig,
    })
}

/// `20261202T004400Z` as seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    clock::parse_rfc3339(&rfc)
}

fn amz_date(t: i64) -> String {
    let r = clock::format_rfc3339(t);
    r.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// Checks what the headers alone can tell (a known access key, a date
/// within the window, the required headers signed), before the body is
/// read: a client without credentials holds no connection for a body.
pub(crate) fn precheck(
    ks: &LocalKeyStore,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Presigned, ApiError> {
    let a = authorization_header(headers)?;
    let (date_header, signed_at) = signing_date(headers, &a)?;
    if headers.contains_key("x-amz-security-token") {
        // This server issues no temporary credentials.
        return Err(unrecognized());
    }
    let secret = ks
        .access_key_secret(a.access_key_id)
        .map_err(ApiError::from)?
        .ok_or_else(unrecognized)?;
    check_skew(date_header, signed_at, now)?;
    Ok(Presigned {
        access_key_id: a.access_key_id.to_string(),
        region: a.region.to_string(),
        service: a.service.to_string(),
        signed_headers: a.signed_headers.iter().map(|h| h.to_string()).collect(),
        signature: a.signature.to_string(),
        signed_at,
        secret,
    })
}

impl Presigned {
    /// The region the request was signed for (its credential scope).
    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// Verifies the signature over the whole request; returns the principal
    /// of its access key.
    pub(crate) fn verify(
        &self,
        method: &str,
        uri: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Caller, ApiError> {
        let signed = signed_header_values(headers, &self.signed_headers)?;
        let expected = expected_signature(self, method, uri, signed, body)?;
        if crate::crypto::constant_time_eq(expected.as_bytes(), self.signature.as_bytes()) {
            Ok(self.secret.caller)
        } else {
            Err(ApiError::new(
                "InvalidSignatureException",
                400,
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method.",
            ))
        }
    }
}

/// The request's Authorization header, parsed, with the required headers
/// signed and scoped to the `kms` service.
fn authorization_header(headers: &HeaderMap) -> Result<Authorization<'_>, ApiError> {
    let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::new(
            "MissingAuthenticationTokenException",
            400,
            "Missing Authentication Token",
        ));
    };
    let auth = auth
        .to_str()
        .map_err(|_| incomplete("Authorization header is not ASCII"))?;
    let a = parse_authorization(auth)?;
    for need in REQUIRED_SIGNED {
        if !a.signed_headers.contains(&need) {
            return Err(incomplete(&format!(
                "SignedHeaders must include {}",
                REQUIRED_SIGNED.join(", ")
            )));
        }
    }
    if a.service != "kms" {
        return Err(ApiError::new(
            "InvalidSignatureException",
            400,
            format!(
                "Credential should be scoped to correct service: 'kms', not '{}'",
                a.service
            ),
        ));
    }
    Ok(a)
}

/// The X-Amz-Date header and its time in seconds, checked against the
/// credential's date scope.
fn signing_date<'h>(
    headers: &'h HeaderMap,
    a: &Authorization<'_>,
) -> Result<(&'h str, i64), ApiError> {
    let date_header = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| incomplete("X-Amz-Date header is missing"))?;
    let signed_at = parse_amz_date(date_header)
        .ok_or_else(|| incomplete("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?;
    if !date_header.starts_with(a.date) || a.date.len() != 8 {
        return Err(ApiError::new(
            "InvalidSignatureException",
            400,
            "Credential should be scoped to a valid date matching X-Amz-Date",
        ));
    }
    Ok((date_header, signed_at))
}

/// Refuses a request signed more than `MAX_SKEW` from `now`.
fn check_skew(date_header: &str, signed_at: i64, now: SystemTime) -> Result<(), ApiError> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let skew = MAX_SKEW.as_secs() as i64;
    if signed_at < now_s - skew || signed_at > now_s + skew {
        let (earlier, bound) = if signed_at < now_s {
            ("earlier", format!("{} - 5 min.", amz_date(now_s)))
        } else {
            ("later", format!("{} + 5 min.", amz_date(now_s)))
        };
        return Err(ApiError::new(
            "InvalidSignatureException",
            400,
            format!(
                "Signature expired: {date_header} is now {earlier} than {} ({bound})",
                amz_date(if earlier == "earlier" {
                    now_s - skew
                } else {
                    now_s + skew
                })
            ),
        ));
    }
    Ok(())
}

/// The headers the client signed, as received (X-Amz-Date is added by the
/// signer from the time).
fn signed_header_values<'h>(
    headers: &'h HeaderMap,
    names: &'h [String],
) -> Result<Vec<(&'h str, &'h str)>, ApiError> {
    let mut signed: Vec<(&str, &str)> = Vec::new();
    for name in names {
        if name == "x-amz-date" {
            continue;
        }
        let values = headers.get_all(name.as_str());
        let mut any = false;
        for v in values.iter() {
            let v = v
                .to_str()
                .map_err(|_| incomplete("a signed header is not ASCII"))?;
            signed.push((name.as_str(), v));
            any = true;
        }
        if !any {
            return Err(incomplete(&format!("signed header {name} is missing")));
        }
    }
    Ok(signed)
}

/// The signature the request should carry, computed with the AWS SDK's signer
/// from the access key's secret.
fn expected_signature(
    p: &Presigned,
    method: &str,
    uri: &str,
    signed: Vec<(&str, &str)>,
    body: &[u8],
) -> Result<String, ApiError> {
    let identity: Identity = Credentials::new(
        p.access_key_id.as_str(),
        p.secret.secret.as_str(),
        None,
        None,
        "kmsfs-access-key",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&p.region)
        .name(&p.service)
        .time(UNIX_EPOCH + Duration::from_secs(p.signed_at.max(0) as u64))
        .settings(settings)
        .build()
        .map_err(|e| ApiError::new("KMSInternalException", 500, e.to_string()))?
        .into();
    let req = SignableRequest::new(method, uri, signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|_| incomplete("the request cannot be put in canonical form"))?;
    let out = sign(req, &params).map_err(|_| incomplete("the request cannot be signed"))?;
    Ok(out.signature().to_string())
}

fn unrecognized() -> ApiError {
    ApiError::new(
        "UnrecognizedClientException",
        400,
        "The security token included in the request is invalid.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_authorization_header() {
        let h = "AWS4-HMAC-SHA256 Credential=AKIAABCDEFGHIJ234567/20261202/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=abc123";
        let a = parse_authorization(h).unwrap();
        assert_eq!(a.access_key_id, "AKIAABCDEFGHIJ234567");
        assert_eq!(a.date, "20261202");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.service, "kms");
        assert_eq!(
            a.signed_headers,
            ["content-type", "host", "x-amz-date", "x-amz-target"]
        );
        assert_eq!(a.signature, "abc123");
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, Signature=x",
            "AWS4-HMAC-SHA256Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=x",
        ] {
            assert_eq!(
                parse_authorization(bad).unwrap_err().kind,
                "IncompleteSignatureException",
                "{bad}"
            );
        }
    }

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date("20261202T004400Z").unwrap();
        assert_eq!(amz_date(t), "20261202T004400Z");
        assert!(parse_amz_date("2026-12-02T00:44:00Z").is_none());
        assert!(parse_amz_date("20261202 004400Z").is_none());
    }
}
