//! Authenticating a delivery: each forge's signature or token, checked on
//! the raw body before anything parses it, compared in constant time.

use sha2::{Digest, Sha256};

use super::{Forge, IntakeError, header};

/// HMAC-SHA256 (RFC 2104) over `sha2`; small enough not to need the `hmac` crate.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Constant-time equality for equal-length inputs (length is not secret):
/// how every secret (webhook signature, token) is compared.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn decode_sha256_hex(value: &str, header: &'static str) -> Result<[u8; 32], IntakeError> {
    let bad = |reason| IntakeError::MalformedSignature { header, reason };
    if value.len() != 64 {
        return Err(bad("expected 64 hex digits of HMAC-SHA256"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| bad("expected 64 hex digits of HMAC-SHA256"))?;
    Ok(out)
}

fn check_hmac(
    secret: &[u8],
    body: &[u8],
    header: &'static str,
    value: &str,
    require_prefix: bool,
) -> Result<(), IntakeError> {
    let hex_part = match value.strip_prefix("sha256=") {
        Some(rest) => rest,
        None if require_prefix => {
            return Err(IntakeError::MalformedSignature {
                header,
                reason: "expected \"sha256=<64 hex digits>\"",
            });
        }
        None => value,
    };
    let given = decode_sha256_hex(hex_part, header)?;
    let expected = hmac_sha256(secret, body);
    if constant_time_eq(&given, &expected) {
        Ok(())
    } else {
        Err(IntakeError::BadSignature { header })
    }
}

const SECRET_HINT: &str = "configure the same secret in the webhook settings of the sending server";

/// Authenticate a delivery.
///
/// `headers` looks up a request header by name and **must be
/// case-insensitive** (as `http::HeaderMap::get` is); `body` must be the raw
/// request body exactly as received.
pub fn verify(
    forge: Forge,
    secret: &[u8],
    headers: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<(), IntakeError> {
    if secret.is_empty() {
        return Err(IntakeError::NoSecretConfigured(forge.display_name()));
    }
    match forge {
        Forge::Github => {
            const H: &str = "X-Hub-Signature-256";
            match header(headers, H) {
                Some(v) => check_hmac(secret, body, H, &v, true),
                None if header(headers, "X-Hub-Signature").is_some() => {
                    Err(IntakeError::MissingSignature {
                        header: H,
                        hint: "only the SHA-1 X-Hub-Signature was sent; armfleet requires the SHA-256 signature",
                    })
                }
                None => Err(IntakeError::MissingSignature {
                    header: H,
                    hint: SECRET_HINT,
                }),
            }
        }
        Forge::Gitea => {
            for h in ["X-Forgejo-Signature", "X-Gitea-Signature"] {
                if let Some(v) = header(headers, h) {
                    return check_hmac(secret, body, h, &v, false);
                }
            }
            Err(IntakeError::MissingSignature {
                header: "X-Gitea-Signature",
                hint: SECRET_HINT,
            })
        }
        Forge::Gitlab => {
            const H: &str = "X-Gitlab-Token";
            let Some(token) = header(headers, H) else {
                return Err(IntakeError::MissingSignature {
                    header: H,
                    hint: "set the \"Secret token\" of the GitLab webhook to the armfleet secret",
                });
            };
            // Compare digests so neither the content nor the length of the
            // secret leaks through timing.
            if constant_time_eq(&Sha256::digest(token.as_bytes()), &Sha256::digest(secret)) {
                Ok(())
            } else {
                Err(IntakeError::BadSignature { header: H })
            }
        }
        Forge::PlainGit => {
            const H: &str = "X-Armfleet-Signature";
            match header(headers, H) {
                Some(v) => check_hmac(secret, body, H, &v, true),
                None => Err(IntakeError::MissingSignature {
                    header: H,
                    hint: "sign the body: \"sha256=\" + hex(HMAC-SHA256(secret, body))",
                }),
            }
        }
    }
}
