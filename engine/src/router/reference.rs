//! The reference matcher: spec §4.1 written as plainly as possible, with no
//! index. It is the oracle the compiled `Router` is checked against.

use super::{AddressFilter, MatchInput};
use crate::model::StreamRoute;
use std::borrow::Cow;

/// SNI patterns a server name can match, in the order they are tried: the
/// exact name, then `*` + every suffix from the longest to the shortest
/// (`*.test.com` matches `a.b.test.com`; `*test.com` matches `footest.com`),
/// then `*`.
pub fn sni_candidates(sni: &str) -> impl Iterator<Item = Cow<'_, str>> {
    let exact = std::iter::once(Cow::Borrowed(sni));
    let wildcards =
        (0..sni.len()).filter(move |&i| sni.is_char_boundary(i)).map(move |i| Cow::Owned(format!("*{}", &sni[i..])));
    exact.chain(wildcards).chain(std::iter::once(Cow::Borrowed("*")))
}

pub fn match_route(routes: &[StreamRoute], input: &MatchInput<'_>) -> Option<usize> {
    let accepts = |route: &StreamRoute| AddressFilter::of(route).accepts(input);
    if let Some(sni) = input.sni {
        for pattern in sni_candidates(sni) {
            let found = routes.iter().position(|r| r.snis.iter().any(|p| *p == pattern) && accepts(r));
            if found.is_some() {
                return found;
            }
        }
    }
    routes.iter().position(|r| r.snis.is_empty() && accepts(r))
}
