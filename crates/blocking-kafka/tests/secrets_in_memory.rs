//! The SASL password leaves no trace in the memory the client frees.
//!
//! This test binary's global allocator looks through every heap block as it is freed (and
//! the old block of every reallocation, which `GlobalAlloc`'s default `realloc` frees) for
//! the password's bytes, while the test is armed. A whole login with each mechanism, over
//! SASL_PLAINTEXT and SASL_SSL, with the password given as a value and read from a file,
//! must free no block that still holds it: every copy the client makes (per login, the
//! PLAIN message, the SaslAuthenticate frame, the password file's bytes) is wiped first.
//!
//! What it cannot see: copies on the stack, in the kernel, and in the other processes (the
//! SASL front, stunnel). The scanner itself is checked first: a copy dropped unwiped is seen.
//!
//! One test only: the allocator is the whole binary's, and arming it is global.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use blocking_kafka::{
    BackoffSettings, Consumer, ConsumerSettings, Password, RecordLimits, SaslMechanism,
    SaslSettings, Security, StartFrom, TlsSettings,
};
use kafka_testkit::secure::{FrontSettings, Protocol, SecureBroker};

/// The SASL front's password for `alice` (see `FrontSettings::default`).
const PASSWORD: &str = "alice-secret";

#[global_allocator]
static SCANNER: Scanner = Scanner;

/// Forwards to the system allocator; while [`ARMED`], counts freed blocks holding
/// [`PASSWORD`].
struct Scanner;

static ARMED: AtomicBool = AtomicBool::new(false);
/// Freed blocks that held the password since the scanner was armed.
static FOUND: AtomicUsize = AtomicUsize::new(0);
/// The sizes of the first few of them (the allocator cannot allocate to say more).
static SIZES: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

// SAFETY: every call is forwarded to `System` unchanged; `dealloc` only reads the block it
// is handed before passing it on.
unsafe impl GlobalAlloc for Scanner {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Zeroed, so that every byte of a block has been written when `dealloc` reads it.
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed) && holds_password(ptr, layout.size()) {
            let n = FOUND.fetch_add(1, Ordering::Relaxed);
            if let Some(slot) = SIZES.get(n) {
                slot.store(layout.size(), Ordering::Relaxed);
            }
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Whether the `size` bytes at `ptr` (a block about to be freed) contain the password.
/// Volatile reads: the compiler may not reason the block's contents away.
fn holds_password(ptr: *const u8, size: usize) -> bool {
    let needle = PASSWORD.as_bytes();
    if size < needle.len() {
        return false;
    }
    // SAFETY: the block is `size` bytes, allocated by us (zeroed, so initialised) and not
    // yet freed.
    let byte = |i: usize| unsafe { ptr.add(i).read_volatile() };
    (0..=size - needle.len()).any(|start| {
        needle
            .iter()
            .enumerate()
            .all(|(j, b)| byte(start + j) == *b)
    })
}

/// Starts counting.
fn arm() {
    FOUND.store(0, Ordering::SeqCst);
    for slot in &SIZES {
        slot.store(0, Ordering::SeqCst);
    }
    ARMED.store(true, Ordering::SeqCst);
}

/// Stops counting: how many freed blocks held the password, and the first ones' sizes.
fn disarm() -> (usize, Vec<usize>) {
    ARMED.store(false, Ordering::SeqCst);
    let found = FOUND.load(Ordering::SeqCst);
    let sizes = SIZES
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .take(found)
        .collect();
    (found, sizes)
}

#[test]
fn a_login_with_every_mechanism_frees_no_memory_that_still_holds_the_password() {
    // The scanner sees a copy dropped unwiped (else this test could never fail).
    arm();
    let copy = std::hint::black_box(format!("password: {PASSWORD}"));
    drop(copy);
    let (found, _) = disarm();
    assert_eq!(found, 1, "the scanner missed an unwiped copy");

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write the password file");
    let plaintext = SecureBroker::start(Protocol::SaslPlaintext, &FrontSettings::default(), false);
    let tls = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    for (sb, protocol) in [(&plaintext, "SASL_PLAINTEXT"), (&tls, "SASL_SSL")] {
        for mechanism in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ] {
            for from_file in [false, true] {
                let case = format!(
                    "{} over {protocol}, password {}",
                    mechanism.as_str(),
                    if from_file {
                        "from a file"
                    } else {
                        "as a value"
                    }
                );
                let tls_settings = (protocol == "SASL_SSL").then(|| TlsSettings {
                    ca_location: Some(sb.certs.path("ca.pem")),
                    client_identity: None,
                    verify_hostname: true,
                });
                arm();
                let password = if from_file {
                    // (What the configuration read at start: the file is read again at login.)
                    Password::from_file(file.clone(), PASSWORD.to_owned())
                } else {
                    Password::fixed(PASSWORD.to_owned())
                };
                let security = Arc::new(
                    Security::new(
                        tls_settings,
                        Some(SaslSettings {
                            mechanism,
                            username: "alice".to_owned(),
                            password,
                        }),
                    )
                    .expect("usable settings"),
                );
                let mut consumer = Consumer::new(settings(sb, &security));
                let session = consumer.session_info();
                drop(consumer);
                drop(security);
                let (found, sizes) = disarm();
                let session = session.unwrap_or_else(|e| panic!("{case}: {e}"));
                assert!(
                    session.to_string().contains(&format!(
                        "authenticated as alice with {}",
                        mechanism.as_str()
                    )),
                    "{case}: {session}"
                );
                assert_eq!(
                    found, 0,
                    "{case}: {found} freed block(s) still held the password (sizes {sizes:?})"
                );
            }
        }
    }
}

fn settings(sb: &SecureBroker, security: &Arc<Security>) -> ConsumerSettings {
    ConsumerSettings {
        bootstrap: vec![sb.addr()],
        client_id: "secrets-in-memory-test".to_owned(),
        group_id: "unused".to_owned(),
        group_instance_id: None,
        assignors: blocking_kafka::Assignor::DEFAULT.to_vec(),
        topic: "unused".to_owned(),
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(500),
        fetch_max_wait: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retry_backoff: BackoffSettings::RETRY,
        reconnect_backoff: BackoffSettings::RECONNECT,
        start_from: StartFrom::Earliest,
        security: security.clone(),
        record_limits: RecordLimits::default(),
    }
}
