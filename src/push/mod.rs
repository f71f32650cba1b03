//! Talking to OCI registries (the Distribution API): pull, push and login. So far: the pieces
//! that need no network — docker-compatible credential lookup ([`credentials`]: config.json
//! `auths`, `credsStore`, `credHelpers`) and `WWW-Authenticate` challenge parsing with the
//! token-request URL ([`challenge`]). The client itself comes with the registry issue.

pub mod challenge;
pub mod credentials;
