//! kiln's one integration-test binary: conformance vectors, golden cases, property tests and
//! end-to-end runs of the real `kiln` executable. Modules are grouped by capability.

mod util;

mod build;
mod check_cli;
mod conformance;
mod container;
mod daemon;
mod daemon_api;
mod golden;
mod images_cli;
mod network;
mod parser_properties;
mod registry;
mod registry_token;
mod run;
mod sandbox;
