//! The client side of SCRAM (RFC 5802, RFC 7677), pure: no I/O, so the RFCs' test vectors
//! drive it directly.
//!
//! A random client nonce (the caller's), the user name as a `saslname` (`,` and `=`
//! escaped), the salted password from PBKDF2, the client proof, and the server's signature
//! checked before the session is trusted. The hashing, HMAC and PBKDF2 are RustCrypto's;
//! nothing cryptographic is written here. As Kafka's own clients do, the password is used as
//! its UTF-8 bytes (no SASLprep).
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Digest;

/// SCRAM iteration counts we accept: RFC 7677 asks for at least 4096 (Kafka's minimum too);
/// the upper bound keeps a hostile server from making us spin.
const MIN_ITERATIONS: u32 = 4096;
const MAX_ITERATIONS: u32 = 1_000_000;

/// The hash a SCRAM mechanism is built on: H, HMAC(H) and PBKDF2-HMAC(H), from RustCrypto.
pub(crate) trait ScramHash {
    fn hash(data: &[u8]) -> Vec<u8>;
    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8>;
    /// Whether `tag` is HMAC(key, data), compared in constant time.
    fn hmac_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool;
    /// Hi(password, salt, iterations) of RFC 5802: PBKDF2 with HMAC(H), one block.
    fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8>;
}

/// Implements [`ScramHash`] for a RustCrypto hash (the test module uses it for SHA-1).
macro_rules! scram_hash {
    ($hash:ty) => {
        impl ScramHash for $hash {
            fn hash(data: &[u8]) -> Vec<u8> {
                <$hash>::digest(data).to_vec()
            }

            fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
                // HMAC takes a key of any length.
                let mut mac = <Hmac<$hash> as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }

            fn hmac_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
                match <Hmac<$hash> as KeyInit>::new_from_slice(key) {
                    Ok(mut mac) => {
                        mac.update(data);
                        mac.verify_slice(tag).is_ok()
                    }
                    Err(_) => false,
                }
            }

            fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
                let mut out = vec![0u8; <$hash as sha2::digest::OutputSizeUser>::output_size()];
                pbkdf2::pbkdf2_hmac::<$hash>(password, salt, iterations, &mut out);
                out
            }
        }
    };
}
scram_hash!(sha2::Sha256);
scram_hash!(sha2::Sha512);

/// The client side of one SCRAM exchange (pure: no I/O, so the RFC vectors can drive it).
pub(crate) struct ScramClient<H> {
    /// `n=<saslname>,r=<client nonce>`.
    first_bare: String,
    nonce: String,
    hash: std::marker::PhantomData<H>,
}

impl<H: ScramHash> ScramClient<H> {
    pub(crate) fn new(user: &str, nonce: &str) -> ScramClient<H> {
        ScramClient {
            first_bare: format!("n={},r={nonce}", saslname(user)),
            nonce: nonce.to_owned(),
            hash: std::marker::PhantomData,
        }
    }

    /// `n,,n=user,r=nonce`: no channel binding, no authorization identity.
    pub(crate) fn first_message(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// The client-final message for the server-first message, and the server signature the
    /// server must send back.
    pub(crate) fn final_message(
        &self,
        password: &str,
        server_first: &str,
    ) -> Result<(String, ServerSignature), String> {
        if let Some(e) = server_first.strip_prefix("e=") {
            return Err(e.to_owned());
        }
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for (i, attr) in server_first.split(',').enumerate() {
            match attr.split_once('=') {
                Some(("m", _)) if i == 0 => {
                    return Err(
                        "the broker requires a SCRAM extension this client does not know".into(),
                    );
                }
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                _ => {}
            }
        }
        let malformed = || format!("malformed SCRAM server-first message {server_first:?}");
        let nonce = nonce.ok_or_else(malformed)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(
                "the broker's SCRAM nonce does not extend ours (is something between us and the broker?)"
                    .into(),
            );
        }
        let salt = B64
            .decode(salt.ok_or_else(malformed)?)
            .map_err(|_| malformed())?;
        let iterations: u32 = iterations
            .ok_or_else(malformed)?
            .parse()
            .map_err(|_| malformed())?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "the broker asks for {iterations} SCRAM iterations; this client accepts {MIN_ITERATIONS} to {MAX_ITERATIONS}"
            ));
        }

        let salted = H::salted_password(password.as_bytes(), &salt, iterations);
        let client_key = H::hmac(&salted, b"Client Key");
        let stored_key = H::hash(&client_key);
        // "biws" is base64("n,,"): the GS2 header we sent, without channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = H::hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        // The server's signature is HMAC(ServerKey, AuthMessage); keep both, so that it is
        // checked by HMAC's own constant-time comparison.
        let expected = ServerSignature {
            server_key: H::hmac(&salted, b"Server Key"),
            auth_message,
        };
        Ok((format!("{without_proof},p={}", B64.encode(proof)), expected))
    }

    /// Checks the server-final message: `v=<ServerSignature>` proves the server knows the
    /// password too; `e=<error>` is a refusal.
    pub(crate) fn verify_server_final(
        server_final: &str,
        expected: &ServerSignature,
    ) -> Result<(), String> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(e.to_owned());
        }
        let signature = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| format!("malformed SCRAM server-final message {server_final:?}"))?;
        if H::hmac_verify(
            &expected.server_key,
            expected.auth_message.as_bytes(),
            &signature,
        ) {
            Ok(())
        } else {
            Err("the broker's SCRAM server signature is wrong: it does not know this password (is something between us and the broker?)".into())
        }
    }
}

/// What the server's final message must prove: HMAC(server_key, auth_message).
pub(crate) struct ServerSignature {
    server_key: Vec<u8>,
    auth_message: String,
}

/// Key material derived from the password: never shown.
impl std::fmt::Debug for ServerSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSignature(<redacted>)")
    }
}

/// A user name as a SCRAM `saslname`: `=` and `,` escaped (RFC 5802, section 5.1).
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    scram_hash!(sha1::Sha1);

    /// Runs one published exchange through `ScramClient`: same messages, same proof, and the
    /// server's signature accepted (and a changed one refused).
    fn check<H: ScramHash>(
        nonce: &str,
        server_first: &str,
        client_final: &str,
        server_final: &str,
    ) {
        let client = ScramClient::<H>::new("user", nonce);
        assert_eq!(client.first_message(), format!("n,,n=user,r={nonce}"));
        let (message, expected) = client
            .final_message("pencil", server_first)
            .expect("a valid server-first message");
        assert_eq!(message, client_final);
        ScramClient::<H>::verify_server_final(server_final, &expected)
            .expect("the published server signature verifies");
        let mut forged = server_final.to_owned();
        forged.replace_range(2..3, if &forged[2..3] == "A" { "B" } else { "A" });
        assert!(ScramClient::<H>::verify_server_final(&forged, &expected).is_err());
    }

    #[test]
    fn rfc_7677_scram_sha_256_test_vector() {
        check::<sha2::Sha256>(
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    #[test]
    fn rfc_5802_scram_sha_1_test_vector_through_the_same_code() {
        check::<sha1::Sha1>(
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    #[test]
    fn user_names_are_escaped_as_saslnames() {
        assert_eq!(saslname("a=b,c"), "a=3Db=2Cc");
        let client = ScramClient::<sha2::Sha256>::new("o,dd=name", "abc");
        assert_eq!(client.first_message(), "n,,n=o=2Cdd=3Dname,r=abc");
    }

    #[test]
    fn a_server_nonce_that_does_not_extend_ours_is_refused() {
        let client = ScramClient::<sha2::Sha256>::new("user", "ours");
        let e = client
            .final_message("pencil", "r=theirs,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .expect_err("foreign nonce");
        assert!(e.contains("nonce"), "{e}");
        let e = client
            .final_message("pencil", "r=ours,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .expect_err("the server added nothing");
        assert!(e.contains("nonce"), "{e}");
    }

    #[test]
    fn too_few_iterations_and_server_errors_are_refused() {
        let client = ScramClient::<sha2::Sha256>::new("user", "n");
        let e = client
            .final_message("pencil", "r=nX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1")
            .expect_err("one iteration");
        assert!(e.contains("iterations"), "{e}");
        let e = client
            .final_message("pencil", "e=unknown-user")
            .expect_err("error");
        assert_eq!(e, "unknown-user");
        let nothing = ServerSignature {
            server_key: Vec::new(),
            auth_message: String::new(),
        };
        let e = ScramClient::<sha2::Sha256>::verify_server_final("e=invalid-proof", &nothing)
            .expect_err("error");
        assert_eq!(e, "invalid-proof");
    }
}
