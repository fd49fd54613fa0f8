#!/usr/bin/env python3
"""Writes the seed corpora of the SCRAM and certificate fuzz targets (fuzz/corpus-seed-scram/,
fuzz/corpus-seed-certificate/), which are committed; run again only to change them.

File names say what the regular test (tests/fuzz_corpus.rs) expects: `valid-*` is accepted
(a SCRAM exchange to the end; a certificate that reads), `invalid-*` is not; either way
every invariant holds. Certificates are made with Python's `cryptography`.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))


def write(directory, name, data):
    path = os.path.join(HERE, directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---- SCRAM: server-first, NUL, server-final (RFC 7677's exchange and its variations)

FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
scram = {
    "valid-rfc7677": (FIRST, FINAL),
    "valid-final-extension": (FIRST, FINAL + ",x=2"),
    "invalid-forged-signature": (FIRST, "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
    "invalid-server-error-final": (FIRST, "e=invalid-proof"),
    "invalid-server-error-forging-a-line": (
        "e=refused\n2030-01-01 00:00:00 - provision_worker - INFO - forged\x1b[2J",
        "",
    ),
    "invalid-foreign-nonce": (FIRST.replace("r=rOprNGfwEbeRWgbNEkqO", "r=theirs"), FINAL),
    "invalid-nonce-not-extended": ("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", ""),
    "invalid-too-few-iterations": (FIRST.replace("i=4096", "i=1"), FINAL),
    "invalid-too-many-iterations": (FIRST.replace("i=4096", "i=4294967295"), FINAL),
    "invalid-bad-salt": (FIRST.replace("s=W22ZaJ0SNY7soEsUEjb6gQ==", "s=!!"), FINAL),
    "invalid-no-salt": ("r=rOprNGfwEbeRWgbNEkqOx,i=4096", FINAL),
    "invalid-extension": ("m=ext," + FIRST, FINAL),
    "invalid-no-signature": (FIRST, "x=1"),
    "invalid-signature-not-base64": (FIRST, "v=###"),
    "invalid-empty": ("", ""),
    # Found by the fuzz target: an attribute twice, which the client took the last of.
    "invalid-iterations-twice": (FIRST + ",i=4097", FINAL),
    "invalid-signature-twice": (FIRST, FINAL + "," + FINAL),
    # Found by the fuzz target: an empty error left the refusal without a reason.
    "invalid-empty-server-error": ("e=", ""),
}
for name, (first, final) in scram.items():
    write("corpus-seed-scram", name, first.encode() + b"\0" + final.encode())
write("corpus-seed-scram", "invalid-not-utf8", b"r=rOprNGfwEbeRWgbNEkqO\xff\xfe,s=AA==,i=4096\0v=\xff")

# ---- Certificates: DER as a broker sends them, PEM as the files hold them

ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seed CA")])


def certificate(cn, not_after, key=None, extra=()):
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(list(extra) + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kafka.example.com")]), False)
        .sign(ca_key, hashes.SHA256())
    ), key


utc = datetime.timezone.utc
plain, plain_key = certificate("kafka.example.com", datetime.datetime(2031, 7, 4, 12, 0, 0, tzinfo=utc))
der = plain.public_bytes(serialization.Encoding.DER)
write("corpus-seed-certificate", "valid-utctime.der", der)
late, _ = certificate("kafka.example.com", datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=utc))
write("corpus-seed-certificate", "valid-generalizedtime.der", late.public_bytes(serialization.Encoding.DER))
forged, _ = certificate(
    "x\n2030-01-01 00:00:00 - provision_worker - INFO - forged\x1b[2J",
    datetime.datetime(2031, 1, 1, tzinfo=utc),
)
write("corpus-seed-certificate", "valid-forged-subject.der", forged.public_bytes(serialization.Encoding.DER))
many, _ = certificate(
    "kafka-1.example.com",
    datetime.datetime(2030, 12, 31, 23, 59, 59, tzinfo=utc),
    extra=[
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Berlin"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Streaming"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com"),
    ],
)
write("corpus-seed-certificate", "valid-many-attributes.der", many.public_bytes(serialization.Encoding.DER))
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_cert, _ = certificate("rsa.example.com", datetime.datetime(2032, 2, 29, tzinfo=utc), key=rsa_key)
write("corpus-seed-certificate", "valid-rsa.der", rsa_cert.public_bytes(serialization.Encoding.DER))

write("corpus-seed-certificate", "invalid-truncated.der", der[:120])
write("corpus-seed-certificate", "invalid-empty.bin", b"")
write("corpus-seed-certificate", "invalid-huge-length.der", b"\x30\x84\xff\xff\xff\xff\x30\x00")
write("corpus-seed-certificate", "invalid-not-a-sequence.der", b"\x04\x03abc")
write("corpus-seed-certificate", "invalid-pem-certificate.pem", plain.public_bytes(serialization.Encoding.PEM))
write(
    "corpus-seed-certificate",
    "invalid-pem-key.pem",
    plain_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ),
)
write(
    "corpus-seed-certificate",
    "invalid-pem-encrypted-pkcs8-key.pem",
    plain_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ),
)
write(
    "corpus-seed-certificate",
    "invalid-pem-encrypted-legacy-key.pem",
    rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"passphrase"),
    ),
)
write(
    "corpus-seed-certificate",
    "invalid-pem-broken-base64.pem",
    b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
)
