//! Who is on the other end of a gRPC call, so a session is bound to the
//! identity that registered it and no other client can act for it (take
//! its commands, suppress its events, replace its config).
//!
//! The identity is the client certificate when mutual TLS is on (its
//! SHA-256, so no certificate parsing: a renewed certificate is a new
//! identity), else the agent token the call carries (`authorization:
//! Bearer …`, one of `agent_tokens`: one per device or per fleet). With
//! neither configured there is none (`--insecure` on a trusted network, or
//! TLS without client authentication): then anyone may act for any
//! session, as the README says.

use ring::digest::{digest, SHA256};
use tonic::{Request, Status};

/// A caller's identity: `cert:` or `token:` and 16 hex digits of the
/// SHA-256 of what proved it (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity(String);

impl Identity {
    /// As the store keeps it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn short_hash(kind: &str, bytes: &[u8]) -> Identity {
    let d = digest(&SHA256, bytes);
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    Identity(format!("{kind}:{hex}"))
}

/// The identity of `req`'s caller. With `tokens` configured, a call with
/// neither a client certificate nor one of them is refused
/// (UNAUTHENTICATED, saying what to send).
pub fn of<T>(req: &Request<T>, tokens: &[String]) -> Result<Option<Identity>, Status> {
    if let Some(certs) = req.peer_certs() {
        if let Some(leaf) = certs.first() {
            return Ok(Some(short_hash("cert", leaf.as_ref())));
        }
    }
    if tokens.is_empty() {
        return Ok(None);
    }
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let known = tokens.iter().find(|t| super::http::token_matches(given, t));
    match known {
        Some(t) => Ok(Some(short_hash("token", t.as_bytes()))),
        None => Err(Status::unauthenticated(
            "this server needs an agent token: send `authorization: Bearer <token>` with one of its agent_tokens (the agent's `token` setting)",
        )),
    }
}
