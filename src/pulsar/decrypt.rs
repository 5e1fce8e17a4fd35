//! Decryption of a Tuya message's `data` field.
//!
//! Invariant: the plaintext is returned byte for byte as it was encrypted;
//! any failure (bad base64, bad length, bad padding, a failed GCM tag) is
//! a [`DecryptError`] that names what went wrong and never the key.

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, KeyInit};
use aes_gcm::Aes128Gcm;
use aes_gcm::aead::Aead;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// How `data` is encrypted, from the message's `em` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptMode {
    /// AES-128-ECB with PKCS#7 padding, base64 (Tuya's default).
    AesEcb,
    /// AES-128-GCM, base64 of a 12-byte nonce, the ciphertext and a
    /// 16-byte tag.
    AesGcm,
}

impl EncryptMode {
    /// The mode named by an `em` property; absent means ECB, as Tuya
    /// documents. An unknown name is `None` (a dead letter).
    pub fn from_property(em: Option<&str>) -> Option<Self> {
        match em {
            None | Some("") | Some("aes_ecb") => Some(EncryptMode::AesEcb),
            Some("aes_gcm") => Some(EncryptMode::AesGcm),
            Some(_) => None,
        }
    }
}

/// Why a payload could not be decrypted. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The access key is shorter than the 24 bytes the key slice needs.
    #[error("the access key is too short to derive the AES key (needs 24 bytes)")]
    KeyTooShort,
    /// `data` is not valid base64.
    #[error("data is not base64")]
    Base64,
    /// ECB ciphertext not a whole number of 16-byte blocks, or empty.
    #[error("ciphertext length {0} is not a positive multiple of 16")]
    BlockLength(usize),
    /// The PKCS#7 padding is wrong (usually the wrong key).
    #[error("bad padding after decryption (wrong key or damaged data)")]
    Padding,
    /// GCM input shorter than nonce + tag.
    #[error("GCM data of {0} bytes is shorter than nonce and tag (28)")]
    GcmTooShort(usize),
    /// The GCM tag did not verify (wrong key or damaged data).
    #[error("GCM authentication failed (wrong key or damaged data)")]
    GcmTag,
}

/// Decrypts `data` (base64) with the AES key `access_key[8..24]`.
pub fn decrypt(mode: EncryptMode, access_key: &str, data: &str) -> Result<Vec<u8>, DecryptError> {
    let key = access_key
        .as_bytes()
        .get(8..24)
        .ok_or(DecryptError::KeyTooShort)?;
    let raw = STANDARD
        .decode(data.trim())
        .map_err(|_| DecryptError::Base64)?;
    match mode {
        EncryptMode::AesEcb => decrypt_ecb(key, raw),
        EncryptMode::AesGcm => decrypt_gcm(key, &raw),
    }
}

fn decrypt_ecb(key: &[u8], mut raw: Vec<u8>) -> Result<Vec<u8>, DecryptError> {
    if raw.is_empty() || !raw.len().is_multiple_of(16) {
        return Err(DecryptError::BlockLength(raw.len()));
    }
    let cipher = Aes128::new(GenericArray::from_slice(key));
    for block in raw.chunks_exact_mut(16) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    let pad = usize::from(*raw.last().ok_or(DecryptError::Padding)?);
    if pad == 0 || pad > 16 || pad > raw.len() {
        return Err(DecryptError::Padding);
    }
    let body = raw.len() - pad;
    if raw[body..].iter().any(|&b| usize::from(b) != pad) {
        return Err(DecryptError::Padding);
    }
    raw.truncate(body);
    Ok(raw)
}

fn decrypt_gcm(key: &[u8], raw: &[u8]) -> Result<Vec<u8>, DecryptError> {
    if raw.len() < 28 {
        return Err(DecryptError::GcmTooShort(raw.len()));
    }
    let (nonce, sealed) = raw.split_at(12);
    let cipher = Aes128Gcm::new(GenericArray::from_slice(key));
    cipher
        .decrypt(GenericArray::from_slice(nonce), sealed)
        .map_err(|_| DecryptError::GcmTag)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // Vectors made independently with python3's `cryptography` package.
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const PLAIN: &str = r#"{"devId":"vdevo1","productKey":"p1","dataId":"d1","status":[{"code":"switch_1","value":true,"t":1700000000000}]}"#;
    const ECB: &str = "pESbC36C+0nvJ983pjU28sE8jny7WRCYQnUKhAyF5aOok7ZW8ls50ssQJKtkeciRw0n0dok0QtGRo0PGFsb1Az6ymDyX/GYyrAmfmsC7U17edyr4Yb5x/1okde+QDnbXSTSC3AdjTvXdJ12hmjWf0Uo3iFy432Or91J3I6gC0jQ=";
    const GCM: &str = "AAECAwQFBgcICQoLiFS0YHnTacbfJO0nfm3KGKpaGs04LQSYyrpdJrgmRh+jTyYqWD0ilhWXbQrRdx1QLP5XQemgDW4Cp9FDdyAUmvrRriZIiuZyPEFV/XpgV6K7G8WX6xZZuODjtZNIFrzKIBFXPyiZKQ/Oc+Ee8aKNknYuLv8nRLvAYcmy3KOG4E8=";

    #[test]
    fn ecb_vector_decrypts_to_the_exact_bytes() {
        assert_eq!(
            decrypt(EncryptMode::AesEcb, KEY, ECB).unwrap(),
            PLAIN.as_bytes()
        );
    }

    #[test]
    fn gcm_vector_decrypts_to_the_exact_bytes() {
        assert_eq!(
            decrypt(EncryptMode::AesGcm, KEY, GCM).unwrap(),
            PLAIN.as_bytes()
        );
    }

    #[test]
    fn wrong_key_or_damage_is_an_error_not_a_panic() {
        let wrong = "0123456789abcdefXXXXXXXXXXXXXXXX";
        assert_eq!(
            decrypt(EncryptMode::AesGcm, wrong, GCM),
            Err(DecryptError::GcmTag)
        );
        assert!(decrypt(EncryptMode::AesEcb, wrong, ECB).is_err());
        assert_eq!(
            decrypt(EncryptMode::AesEcb, KEY, "!!"),
            Err(DecryptError::Base64)
        );
        assert_eq!(
            decrypt(EncryptMode::AesEcb, KEY, "AAAA"),
            Err(DecryptError::BlockLength(3))
        );
        assert_eq!(
            decrypt(EncryptMode::AesGcm, KEY, "AAAA"),
            Err(DecryptError::GcmTooShort(3))
        );
        assert_eq!(
            decrypt(EncryptMode::AesEcb, "short", ECB),
            Err(DecryptError::KeyTooShort)
        );
    }

    #[test]
    fn errors_never_show_the_key() {
        let wrong = "0123456789abcdefXXXXXXXXXXXXXXXX";
        for e in [
            decrypt(EncryptMode::AesGcm, wrong, GCM).unwrap_err(),
            decrypt(EncryptMode::AesEcb, wrong, ECB).unwrap_err(),
        ] {
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("89abcdef") && !shown.contains("XXXX"),
                "{shown}"
            );
        }
    }

    #[test]
    fn em_property_picks_the_mode() {
        assert_eq!(EncryptMode::from_property(None), Some(EncryptMode::AesEcb));
        assert_eq!(
            EncryptMode::from_property(Some("aes_ecb")),
            Some(EncryptMode::AesEcb)
        );
        assert_eq!(
            EncryptMode::from_property(Some("aes_gcm")),
            Some(EncryptMode::AesGcm)
        );
        assert_eq!(EncryptMode::from_property(Some("rot13")), None);
    }
}
