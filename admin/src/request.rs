//! A request as the handler sees it: plain data, no socket, so tests can drive
//! the whole Admin API as a function.

use std::net::IpAddr;

#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without the query string, not percent-decoded (ids cannot
    /// contain escapes: the id pattern forbids `%`).
    pub path: &'a str,
    /// The raw query string (after `?`), possibly empty.
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub peer: IpAddr,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The first value of a header, names compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The first value of a query argument, percent-decoded.
    pub fn arg(&self, name: &str) -> Option<String> {
        query_pairs(self.query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// A cookie's value from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// `a=1&b=x%3Dy` -> `[("a","1"), ("b","x=y")]`; `+` means a space, as in forms.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && hex_pair(bytes[i + 1], bytes[i + 2]).is_some() => {
                out.push(hex_pair(bytes[i + 1], bytes[i + 2]).expect("checked"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(digit(high)? << 4 | digit(low)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_arguments_are_decoded() {
        assert_eq!(
            query_pairs("filter=upstream_id%3D1%26service_id%3D2&page=1&x"),
            vec![
                ("filter".into(), "upstream_id=1&service_id=2".into()),
                ("page".into(), "1".into()),
                ("x".into(), "".into())
            ]
        );
        assert_eq!(percent_decode("a%2"), "a%2", "a cut escape stays as written");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
