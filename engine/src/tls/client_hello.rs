//! Reading the server name (SNI) out of a TLS ClientHello without terminating
//! TLS: what passthrough routing and the choice of certificate both need
//! before any TLS state exists.
//!
//! [`peek_sni`] is a pure function over the bytes a client has sent so far. It
//! never allocates unless the ClientHello spans several TLS records, never
//! panics on any input, and is cheap to call again after every read: until the
//! whole ClientHello is buffered it only walks record headers. The caller caps
//! how many bytes it buffers ([`super::CLIENT_HELLO_BYTES_MAX`]) and how long
//! it waits (`strait.tls.handshake_timeout`); a client that sends a 16 MiB
//! "ClientHello" one byte at a time runs into one of the two.

use std::borrow::Cow;

/// What the bytes so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    /// A ClientHello may still come: read more bytes.
    NeedMore,
    /// A complete ClientHello: its server name (lower-cased, one trailing dot
    /// removed), or `None` when the client sent none.
    Sni(Option<String>),
    /// Not a TLS ClientHello (another protocol, SSLv2, or malformed).
    NotTls,
}

const RECORD_HEADER_BYTES: usize = 5;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// TLSPlaintext.length may not exceed 2^14 (RFC 8446 §5.1).
const RECORD_PAYLOAD_MAX: usize = 1 << 14;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A DNS name is at most 253 characters (255 with a trailing dot and slack).
const HOST_NAME_BYTES_MAX: usize = 255;

/// Looks for a complete ClientHello at the start of `bytes`.
pub fn peek_sni(bytes: &[u8]) -> Peek {
    match handshake_message(bytes) {
        Err(peek) => peek,
        Ok(message) => parse_client_hello(&message).unwrap_or(Peek::NotTls),
    }
}

/// The first handshake message (header included), reassembled from as many
/// records as it spans; `Err(NeedMore)` until every byte of it is there.
fn handshake_message(bytes: &[u8]) -> Result<Cow<'_, [u8]>, Peek> {
    // First pass: walk record headers only, to learn whether the message is complete.
    let mut at = 0;
    let mut header = [0u8; 4];
    let mut gathered = 0usize;
    let mut needed: Option<usize> = None;
    let mut records = 0usize;
    loop {
        let Some(record) = bytes.get(at..at + RECORD_HEADER_BYTES) else {
            return Err(if valid_prefix(&bytes[at..]) { Peek::NeedMore } else { Peek::NotTls });
        };
        if !valid_prefix(record) {
            return Err(Peek::NotTls);
        }
        let length = usize::from(u16::from_be_bytes([record[3], record[4]]));
        if length == 0 || length > RECORD_PAYLOAD_MAX {
            return Err(Peek::NotTls);
        }
        records += 1;
        let payload_start = at + RECORD_HEADER_BYTES;
        let available = bytes.len().saturating_sub(payload_start).min(length);
        let payload = &bytes[payload_start..payload_start + available];
        // Fill the 4-byte handshake header from this record as far as it goes.
        for &byte in payload {
            if gathered >= 4 {
                break;
            }
            header[gathered] = byte;
            gathered += 1;
            if gathered == 4 {
                if header[0] != HANDSHAKE_CLIENT_HELLO {
                    return Err(Peek::NotTls);
                }
                needed = Some(4 + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize);
            }
        }
        let have_before = handshake_bytes_before(records, at, bytes);
        let have = have_before + available;
        if let Some(needed) = needed {
            if have >= needed {
                return Ok(assemble(bytes, records, needed));
            }
        }
        if available < length {
            return Err(Peek::NeedMore);
        }
        at = payload_start + length;
    }
}

/// Whether `prefix` (up to 5 bytes) can begin a TLS handshake record.
fn valid_prefix(prefix: &[u8]) -> bool {
    // type 22, version major 3 (SSLv3 .. TLS 1.3 all say 3.x in the record layer).
    prefix.first().is_none_or(|&t| t == CONTENT_TYPE_HANDSHAKE) && prefix.get(1).is_none_or(|&v| v == 3)
}

/// Handshake bytes carried by the complete records before the one at `at`.
fn handshake_bytes_before(records: usize, at: usize, _bytes: &[u8]) -> usize {
    // Every complete record before `at` contributed its whole payload: `at`
    // bytes minus one header per such record.
    at - (records - 1) * RECORD_HEADER_BYTES
}

/// The first `needed` handshake bytes. One record: borrowed; several: copied.
fn assemble(bytes: &[u8], records: usize, needed: usize) -> Cow<'_, [u8]> {
    if records == 1 {
        return Cow::Borrowed(&bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + needed]);
    }
    let mut message = Vec::with_capacity(needed);
    let mut at = 0;
    while message.len() < needed {
        let length = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        let start = at + RECORD_HEADER_BYTES;
        let take = length.min(needed - message.len());
        message.extend_from_slice(&bytes[start..start + take]);
        at = start + length;
    }
    Cow::Owned(message)
}

/// A tiny cursor: every read is bounds-checked and `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// Parses a complete ClientHello handshake message (4-byte header included).
fn parse_client_hello(message: &[u8]) -> Option<Peek> {
    let mut r = Reader { bytes: message.get(4..)? };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.bytes.is_empty() {
        // No extensions at all (old clients): no SNI.
        return Some(Peek::Sni(None));
    }
    let mut extensions = Reader { bytes: r.vec16()? };
    while !extensions.bytes.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == EXTENSION_SERVER_NAME {
            return server_name(data).map(Peek::Sni);
        }
    }
    Some(Peek::Sni(None))
}

/// The host_name entry of a server_name extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Option<Option<String>> {
    let mut ext = Reader { bytes: data };
    let mut list = Reader { bytes: ext.vec16()? };
    while !list.bytes.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        if name.is_empty() || name.len() > HOST_NAME_BYTES_MAX {
            return None;
        }
        let valid = name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return None;
        }
        let text = std::str::from_utf8(name).ok()?;
        let text = text.strip_suffix('.').unwrap_or(text);
        return Some(Some(text.to_ascii_lowercase()));
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client would send it, in one record.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[3, 3]);
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut extensions = Vec::new();
        // An unrelated extension first (supported_versions).
        extensions.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            extensions.extend_from_slice(&0u16.to_be_bytes());
            extensions.extend_from_slice(&(n + 5).to_be_bytes());
            extensions.extend_from_slice(&(n + 3).to_be_bytes());
            extensions.push(0);
            extensions.extend_from_slice(&n.to_be_bytes());
            extensions.extend_from_slice(name.as_bytes());
        }
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![1];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        records(&message, usize::MAX)
    }

    /// Wraps a handshake message in records of at most `chunk` payload bytes.
    fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk.min(RECORD_PAYLOAD_MAX)) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn a_complete_client_hello_gives_its_lower_cased_sni() {
        assert_eq!(peek_sni(&client_hello(Some("Test.COM."))), Peek::Sni(Some("test.com".into())));
        assert_eq!(peek_sni(&client_hello(None)), Peek::Sni(None));
    }

    #[test]
    fn a_client_hello_cut_at_every_byte_needs_more() {
        let hello = client_hello(Some("a.test.com"));
        for cut in 0..hello.len() {
            assert_eq!(peek_sni(&hello[..cut]), Peek::NeedMore, "cut at {cut}");
        }
        let mut with_more = hello.clone();
        with_more.extend_from_slice(b"trailing application bytes");
        assert_eq!(peek_sni(&with_more), Peek::Sni(Some("a.test.com".into())));
    }

    #[test]
    fn a_client_hello_split_across_records_is_reassembled() {
        let one = client_hello(Some("split.test.com"));
        let message = &one[5..];
        for chunk in [1, 2, 3, 4, 5, 7, 40, 100] {
            let split = records(message, chunk);
            assert_eq!(peek_sni(&split), Peek::Sni(Some("split.test.com".into())), "chunk {chunk}");
            for cut in 0..split.len() {
                assert_eq!(peek_sni(&split[..cut]), Peek::NeedMore, "chunk {chunk} cut at {cut}");
            }
        }
    }

    #[test]
    fn other_protocols_are_not_tls() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x02",                                 // SSLv2-era version
            b"\x80\x2e\x01\x03\x01",                     // SSLv2 compatible hello
            b"\x16\x03\x01\x00\x00",                     // empty record
            b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", // ServerHello, not ClientHello
            b"\x17\x03\x03\x00\x01\x00",                 // application data
        ] {
            assert_eq!(peek_sni(bytes), Peek::NotTls, "{bytes:?}");
        }
    }

    #[test]
    fn a_malformed_server_name_is_not_tls() {
        let mut hello = client_hello(Some("bad name"));
        assert_eq!(peek_sni(&hello), Peek::NotTls);
        // A length that runs past the message.
        let len = hello.len();
        hello[len - 12] = 0xff;
        assert_eq!(peek_sni(&hello), Peek::NotTls);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for _ in 0..20_000 {
            let len = (seed % 300) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            if seed % 3 == 0 && bytes.len() > 5 {
                bytes[0] = 22;
                bytes[1] = 3;
            }
            let _ = peek_sni(&bytes);
        }
        // A real hello with every single byte flipped.
        let hello = client_hello(Some("x.test.com"));
        for i in 0..hello.len() {
            let mut bent = hello.clone();
            bent[i] ^= 0xff;
            let _ = peek_sni(&bent);
        }
    }
}
