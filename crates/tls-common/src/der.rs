//! Just enough DER to walk a certificate's structure, beneath the clients' display-only
//! readers (the Kafka client's subject, names and expiry for `check`, the PostgreSQL
//! client's signature algorithm for channel binding). Every trust decision is rustls'
//! (webpki's), on the same bytes.

/// One tag-length-value: (tag, value, the bytes after it). `None` when the length is
/// indefinite, longer than four bytes, or runs past the end.
pub fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | usize::from(*b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths_are_read_and_bad_ones_refused() {
        assert_eq!(
            tlv(&[0x06, 0x02, 0x2a, 0x86, 0xff]),
            Some((0x06, &[0x2a, 0x86][..], &[0xff][..]))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(tlv(&long), Some((0x04, &[7u8; 0x80][..], &[][..])));
        // Indefinite, five length bytes, shorter than said, empty.
        assert_eq!(tlv(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(tlv(&[0x30, 0x03, 0x01]), None);
        assert_eq!(tlv(&[0x30, 0x82, 0x01]), None);
        assert_eq!(tlv(&[]), None);
    }
}
