//! Who may use the Admin API: the peer allowlist (`allow_admin`) and the API
//! key (spec §2.1).

use crate::envelope::Response;
use crate::request::Request;
use std::net::IpAddr;
use strait_engine::config::{AdminRole, AdminSettings};
use strait_engine::model::IpMatch;
use subtle::ConstantTimeEq;

/// `None` lets every peer in; `Some([])` lets nobody in (APISIX renders it as
/// `deny all`). Unlike APISIX's nginx HTML page, the refusal is JSON (spec §8.23).
pub fn check_peer(allow_admin: &Option<Vec<IpMatch>>, peer: IpAddr) -> Result<(), Response> {
    match allow_admin {
        None => Ok(()),
        Some(nets) if nets.iter().any(|net| net.contains(peer)) => Ok(()),
        Some(_) => Err(Response::error(403, format!("forbidden: {peer} is not in allow_admin"))),
    }
}

/// The token comes from `?api_key=`, else `X-API-KEY`, else the `x_api_key`
/// cookie: the first one present wins, even when it is wrong.
pub fn check_token(settings: &AdminSettings, request: &Request<'_>) -> Result<(), Response> {
    if !settings.key_required || settings.keys.is_empty() {
        return Ok(());
    }
    let arg = request.arg("api_key");
    let token = arg.as_deref().or_else(|| request.header("x-api-key")).or_else(|| request.cookie("x_api_key"));
    let Some(token) = token else {
        return Err(Response::unauthorized("missing apikey"));
    };
    // Every key is compared (no early exit) so the time taken says nothing
    // about which key, or how much of one, matched. An empty configured key
    // never matches: it is a key still to be generated, not "no key".
    let mut role = None;
    for key in &settings.keys {
        let equal: bool = key.key.as_bytes().ct_eq(token.as_bytes()).into();
        if equal && !key.key.is_empty() && role.is_none() {
            role = Some(key.role);
        }
    }
    match role {
        None => Err(Response::unauthorized("wrong apikey")),
        Some(AdminRole::Viewer) if request.method != "GET" => {
            Err(Response::unauthorized("invalid method for role viewer"))
        }
        Some(_) => Ok(()),
    }
}
