//! `kiln system df`: what the store holds and what pruning would reclaim, rendered from
//! docker's disk-usage document ([`crate::engine::system`]), in-process or from a daemon.

use std::io::Write;

use super::container::Via;
use super::engine::Engine;
use super::format::table;
use super::Outcome;

pub fn df(via: Via) -> anyhow::Result<Outcome> {
    let doc = match via {
        Via::Local(root) => {
            let engine = Engine::open(root)?;
            crate::engine::system::disk_usage(&engine.root, &engine.store)?
        }
        Via::Api(api) => api.get_json("/system/df")?,
    };
    let rows = crate::engine::system::df_rows(&doc);
    std::io::stdout()
        .lock()
        .write_all(table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], &rows).as_bytes())?;
    Ok(Outcome::Success)
}
