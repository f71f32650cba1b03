//! Running containers (`kiln run`): networking so far.

pub mod network;
