//! Password authentication, pure (no I/O): the client side of SCRAM-SHA-256 and
//! SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, with PostgreSQL's conventions) and the MD5
//! challenge response. Our own rather than postgres-protocol's so that every secret (the
//! password after SASLprep, the salted password, the client and server keys, MD5's
//! password-equivalent inner hash) is wiped when dropped.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// PostgreSQL's name of the mechanisms.
pub(crate) const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub(crate) const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The most PBKDF2 iterations a server may ask for. The count comes from the server before
/// it has proven anything, and each iteration is two HMACs: unbounded, anyone answering
/// on the port could make us burn CPU for minutes. PostgreSQL's default is 4096;
/// 100,000 is the bound rust-postgres and pgjdbc chose.
pub(crate) const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// How a SCRAM exchange treats channel binding (RFC 5802's GS2 header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// "n": we do not bind (no TLS, or channel_binding=disable, or we cannot hash the
    /// server's certificate).
    Unsupported,
    /// "y": we could bind but the server did not offer SCRAM-SHA-256-PLUS. A server that
    /// did offer it refuses this, which detects a man in the middle removing the offer.
    NotOffered,
    /// "p=tls-server-end-point": bound to the hash of the server's certificate.
    TlsServerEndPoint(Vec<u8>),
}

/// The client side of one SCRAM-SHA-256 exchange.
pub(crate) struct Scram {
    binding: Binding,
    client_nonce: String,
    /// SASLprep'd password, until the server's salt and iteration count arrive.
    password: Zeroizing<Vec<u8>>,
    /// Set by `client_final`, needed by `verify_server_final`.
    server_key: Zeroizing<[u8; 32]>,
    auth_message: String,
}

impl Binding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Binding::Unsupported => "n,,",
            Binding::NotOffered => "y,,",
            Binding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    pub(crate) fn mechanism(&self) -> &'static str {
        match self {
            Binding::TlsServerEndPoint(_) => SCRAM_SHA_256_PLUS,
            _ => SCRAM_SHA_256,
        }
    }
}

impl Scram {
    /// Starts an exchange; `client_first` is the SASLInitialResponse's data.
    pub(crate) fn new(password: &str, binding: Binding) -> Scram {
        let mut nonce = [0u8; 18];
        rand::fill(&mut nonce);
        Scram::with_nonce(password, binding, BASE64.encode(nonce))
    }

    fn with_nonce(password: &str, binding: Binding, client_nonce: String) -> Scram {
        Scram {
            binding,
            client_nonce,
            password: saslprep(password),
            server_key: Zeroizing::new([0; 32]),
            auth_message: String::new(),
        }
    }

    /// SCRAM-SHA-256 or SCRAM-SHA-256-PLUS.
    pub(crate) fn mechanism(&self) -> &'static str {
        self.binding.mechanism()
    }

    /// `n,,n=,r=<nonce>`: PostgreSQL takes the user from the start-up message and ignores
    /// SCRAM's user name, so it is empty, as libpq sends it.
    pub(crate) fn client_first(&self) -> String {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare())
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.client_nonce)
    }

    /// The client-final message for the server-first message `server_first`: the proof
    /// that we know the password. Wipes the password.
    pub(crate) fn client_final(
        &mut self,
        server_first: &[u8],
    ) -> Result<Zeroizing<String>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server's SCRAM challenge is not UTF-8".to_owned())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_at_checked(2) {
                Some(("r=", value)) => nonce = Some(value),
                Some(("s=", value)) => salt = Some(value),
                Some(("i=", value)) => iterations = Some(value),
                Some(("m=", _)) => {
                    return Err(
                        "the server's SCRAM challenge asks for an extension (m=) we do not know"
                            .to_owned(),
                    );
                }
                _ => {}
            }
        }
        let missing = |what: &str| format!("the server's SCRAM challenge has no {what}");
        let nonce = nonce.ok_or_else(|| missing("nonce (r=)"))?;
        let salt = salt.ok_or_else(|| missing("salt (s=)"))?;
        let iterations = iterations.ok_or_else(|| missing("iteration count (i=)"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(
                "the server's SCRAM nonce does not extend ours: it is not answering our request"
                    .to_owned(),
            );
        }
        if !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(
                "the server's SCRAM nonce holds characters SCRAM does not allow".to_owned(),
            );
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| "the server's SCRAM salt is not base64".to_owned())?;
        let iterations: u32 = iterations.parse().map_err(|_| {
            format!("the server's SCRAM iteration count {iterations:?} is not a number")
        })?;
        if iterations == 0 || iterations > MAX_SCRAM_ITERATIONS {
            return Err(format!(
                "the server asks for {iterations} SCRAM iterations; we accept 1 to {MAX_SCRAM_ITERATIONS} (PostgreSQL's default is 4096)"
            ));
        }

        let mut salted = Zeroizing::new([0u8; 32]);
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iterations, salted.as_mut());
        self.password.zeroize();
        let client_key = Zeroizing::new(hmac(salted.as_ref(), b"Client Key"));
        let stored_key = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(client_key.as_ref())));
        *self.server_key = hmac(salted.as_ref(), b"Server Key");

        let mut channel = self.binding.gs2_header().as_bytes().to_vec();
        if let Binding::TlsServerEndPoint(hash) = &self.binding {
            channel.extend_from_slice(hash);
        }
        let without_proof = format!("c={},r={nonce}", BASE64.encode(&channel));
        self.auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let signature = Zeroizing::new(hmac(stored_key.as_ref(), self.auth_message.as_bytes()));
        let mut proof = Zeroizing::new(*client_key);
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        Ok(Zeroizing::new(format!(
            "{without_proof},p={}",
            BASE64.encode(proof.as_ref())
        )))
    }

    /// Checks the server-final message: the server proves it knows the password too (and,
    /// with channel binding, that it is the end of our TLS session).
    pub(crate) fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| "the server's final SCRAM message is not UTF-8".to_owned())?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("the server ended SCRAM with the error {error:?}"));
        }
        let verifier = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or_else(|| "the server's final SCRAM message has no signature (v=)".to_owned())?;
        let verifier = BASE64
            .decode(verifier)
            .map_err(|_| "the server's SCRAM signature is not base64".to_owned())?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.server_key.as_ref())
            .map_err(|_| "HMAC refused a 32-byte key".to_owned())?;
        mac.update(self.auth_message.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&verifier).map_err(|_| {
            "the server's SCRAM signature is wrong: it does not know the password, so it is not the server we meant to reach (or something between us rewrote the exchange)".to_owned()
        })
    }
}

/// The response to an MD5 challenge: `md5` + hex(md5(hex(md5(password + user)) + salt)).
/// The inner hash is what the server stores and is as good as the password: wiped.
pub(crate) fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> Zeroizing<String> {
    let mut inner = Md5::new();
    inner.update(password.as_bytes());
    inner.update(user.as_bytes());
    let mut inner_digest = Zeroizing::new(<[u8; 16]>::from(inner.finalize()));
    let inner_hex = Zeroizing::new(hex(inner_digest.as_ref()));
    inner_digest.zeroize();
    let mut outer = Md5::new();
    outer.update(inner_hex.as_bytes());
    outer.update(salt);
    Zeroizing::new(format!("md5{}", hex(&outer.finalize())))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; the fallback is unreachable but costs nothing.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// SASLprep (RFC 4013) as PostgreSQL applies it: a password that is not UTF-8 or holds
/// characters SASLprep prohibits is used as it is (the server does the same when it
/// stores it).
///
/// An ASCII password is returned as it is without the tables: SASLprep leaves printable
/// ASCII unchanged and prohibits ASCII control characters, for which PostgreSQL uses the
/// raw bytes too. Without the `saslprep` feature, non-ASCII passwords are used as their
/// UTF-8 bytes as well, which matches the server only if SASLprep would not change them.
fn saslprep(password: &str) -> Zeroizing<Vec<u8>> {
    if password.is_ascii() {
        return Zeroizing::new(password.as_bytes().to_vec());
    }
    #[cfg(feature = "saslprep")]
    {
        match stringprep::saslprep(password) {
            Ok(prepared) => {
                let bytes = Zeroizing::new(prepared.as_bytes().to_vec());
                if let std::borrow::Cow::Owned(mut owned) = prepared {
                    owned.zeroize();
                }
                bytes
            }
            Err(_) => Zeroizing::new(password.as_bytes().to_vec()),
        }
    }
    #[cfg(not(feature = "saslprep"))]
    {
        Zeroizing::new(password.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector (user "user", password "pencil"), with PostgreSQL's empty
    /// user name in the client-first message instead of "n=user".
    #[test]
    fn scram_sha_256_matches_rfc_7677_with_an_empty_user_name() {
        let mut scram = Scram::with_nonce(
            "pencil",
            Binding::Unsupported,
            "rOprNGfwEbeRWgbNEkqO".to_owned(),
        );
        assert_eq!(scram.client_first(), "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = scram.client_final(server_first.as_bytes()).expect("valid");
        // The RFC's proof covers "n=user"; ours covers "n=", so only the prefix is fixed.
        assert!(
            client_final
                .starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="),
            "{}",
            client_final.as_str()
        );
        assert!(scram.password.iter().all(|&b| b == 0), "password wiped");
        // The server's signature, computed as a server would over our auth message.
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            b"pencil",
            &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
            &mut salted,
        );
        let server_key = hmac(&salted, b"Server Key");
        let signature = hmac(&server_key, scram.auth_message.as_bytes());
        let good = format!("v={}", BASE64.encode(signature));
        assert_eq!(scram.verify_server_final(good.as_bytes()), Ok(()));
        let bad = format!("v={}", BASE64.encode([0u8; 32]));
        let err = scram.verify_server_final(bad.as_bytes()).unwrap_err();
        assert!(err.contains("does not know the password"), "{err}");
    }

    /// With the RFC's "n=user" the same code produces the RFC's proof, which checks the
    /// cryptography against the published vector.
    #[test]
    fn scram_proof_equals_the_rfc_7677_proof() {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            b"pencil",
            &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            BASE64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_key = hmac(&salted, b"Server Key");
        assert_eq!(
            BASE64.encode(hmac(&server_key, auth.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn a_hostile_scram_challenge_is_refused_in_words() {
        let scram = || Scram::with_nonce("pw", Binding::Unsupported, "abc".to_owned());
        let cases = [
            ("r=xyz1,s=AAAA,i=4096", "does not extend ours"),
            ("r=abc,s=AAAA,i=4096", "does not extend ours"),
            ("r=abcd,s=AAAA,i=100000000", "100000000 SCRAM iterations"),
            ("r=abcd,s=AAAA,i=0", "0 SCRAM iterations"),
            ("r=abcd,s=!!,i=4096", "not base64"),
            ("r=abcd,i=4096", "no salt"),
            ("m=ext,r=abcd,s=AAAA,i=1", "extension"),
        ];
        for (challenge, expected) in cases {
            let err = scram().client_final(challenge.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{challenge}: {err}");
        }
    }

    #[test]
    fn channel_binding_sets_the_gs2_header_and_the_bound_data() {
        let mut scram = Scram::with_nonce(
            "pw",
            Binding::TlsServerEndPoint(vec![1, 2, 3]),
            "abc".to_owned(),
        );
        assert_eq!(scram.client_first(), "p=tls-server-end-point,,n=,r=abc");
        let client_final = scram.client_final(b"r=abcd,s=AAAA,i=1").expect("valid");
        let c = client_final.split(',').next().unwrap();
        let bound = BASE64.decode(c.strip_prefix("c=").unwrap()).unwrap();
        assert_eq!(bound, b"p=tls-server-end-point,,\x01\x02\x03");
        assert_eq!(
            Scram::with_nonce("pw", Binding::NotOffered, "abc".to_owned()).client_first(),
            "y,,n=,r=abc"
        );
    }

    #[cfg(feature = "saslprep")]
    #[test]
    fn non_ascii_passwords_are_saslprepped_as_rfc_4013_says() {
        // RFC 4013 section 3's examples: a soft hyphen maps to nothing, a Roman numeral
        // nine to "IX" (NFKC), a non-breaking space to a space.
        assert_eq!(saslprep("I\u{00AD}X").as_slice(), b"IX");
        assert_eq!(saslprep("\u{2168}").as_slice(), b"IX");
        assert_eq!(saslprep("a\u{00A0}b").as_slice(), b"a b");
        // A prohibited character: used as it is, as the server does.
        assert_eq!(saslprep("a\u{0007}").as_slice(), b"a\x07");
        assert_eq!(saslprep("pässwörd").as_slice(), "pässwörd".as_bytes());
    }

    #[test]
    fn md5_response_matches_postgres() {
        // SELECT 'md5' || md5(md5('secret' || 'alice') || E'\\x01020304'::bytea::text)
        // is awkward in SQL; the value below was computed with Python's hashlib:
        // "md5" + md5(md5(b"secretalice").hexdigest().encode() + b"\x01\x02\x03\x04").hexdigest()
        assert_eq!(
            md5_response("alice", "secret", [1, 2, 3, 4]).as_str(),
            "md598a0412b9c31436fc53776e863350083"
        );
    }
}
