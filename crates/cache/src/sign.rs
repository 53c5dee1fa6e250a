//! Signed upload and download URLs.
//!
//! The blob PUTs and the archive GET carry no `Authorization` header (the
//! Azure SDK and `@actions/cache` send none), so the credential travels in the
//! URL, like an Azure SAS: `se` is the expiry (unix ms) and `sig` an
//! HMAC-SHA256 over the operation, the entry id and the expiry. The client
//! masks `sig` values in its logs.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::index::Millis;

/// What a signed URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlOp {
    Upload,
    Download,
}

impl UrlOp {
    fn as_str(self) -> &'static str {
        match self {
            UrlOp::Upload => "upload",
            UrlOp::Download => "download",
        }
    }
}

/// Signs and checks URLs with one secret.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

impl UrlSigner {
    pub fn new(key: &[u8]) -> UrlSigner {
        UrlSigner { key: key.to_vec() }
    }

    /// A signer with a fresh random key.
    pub fn random() -> UrlSigner {
        UrlSigner { key: rand::random::<[u8; 32]>().to_vec() }
    }

    fn mac(&self, op: UrlOp, id: i64, expires: Millis) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("{}\n{id}\n{expires}", op.as_str()).as_bytes());
        mac
    }

    /// The query string (`se=..&sig=..`) for `op` on entry `id` until `expires`.
    pub fn query(&self, op: UrlOp, id: i64, expires: Millis) -> String {
        let sig = hex::encode(self.mac(op, id, expires).finalize().into_bytes());
        format!("se={expires}&sig={sig}")
    }

    /// Whether `sig` is valid for `op` on `id` with expiry `expires`, at `now`.
    pub fn check(&self, op: UrlOp, id: i64, expires: Millis, sig: &str, now: Millis) -> bool {
        if now > expires {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else { return false };
        let expected = self.mac(op, id, expires).finalize().into_bytes();
        expected.as_slice().ct_eq(&sig).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig_of(query: &str) -> &str {
        query.split("sig=").nth(1).unwrap()
    }

    #[test]
    fn signatures_bind_op_id_and_expiry() {
        let s = UrlSigner::new(b"k");
        let q = s.query(UrlOp::Download, 7, 1000);
        assert!(s.check(UrlOp::Download, 7, 1000, sig_of(&q), 999));
        assert!(!s.check(UrlOp::Download, 7, 1000, sig_of(&q), 1001), "expired");
        assert!(!s.check(UrlOp::Upload, 7, 1000, sig_of(&q), 0), "other op");
        assert!(!s.check(UrlOp::Download, 8, 1000, sig_of(&q), 0), "other id");
        assert!(!s.check(UrlOp::Download, 7, 2000, sig_of(&q), 0), "other expiry");
        assert!(
            !UrlSigner::new(b"other").check(UrlOp::Download, 7, 1000, sig_of(&q), 0),
            "other key"
        );
        assert!(!s.check(UrlOp::Download, 7, 1000, "zz", 0));
    }
}
