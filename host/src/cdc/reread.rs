//! Completing a change that lacks an unchanged TOASTed value: the default
//! `REPLICA IDENTITY` sends only changed out-of-line values, so pgoutput
//! marks the others unchanged and Debezium writes
//! `__debezium_unavailable_value`. The row is read as it is now from the
//! source by its key. It may be newer than the change; the stream's later
//! changes are applied after it, so the target converges to the source
//! exactly, and in between it may show a state the source reached a little
//! later. A row deleted meanwhile yields nothing (its delete follows).

use super::apply::Item;
use super::debezium::ChangeOp;
use crate::settings::Settings;
use crate::source::SnapshotSource;

/// Reads rows back from the source, on a connection opened when first
/// needed.
#[derive(Default)]
pub(crate) struct Reread {
    source: Option<Box<dyn SnapshotSource>>,
}

impl Reread {
    /// The change for source row `id` as the source holds it now, or `None`
    /// if the row is gone; `xid` (the change's transaction, when known) is
    /// waited for first.
    pub(crate) async fn current(
        &mut self,
        settings: &Settings,
        id: i64,
        xid: Option<u32>,
    ) -> anyhow::Result<Option<Item>> {
        if self.source.is_none() {
            self.source = Some(crate::engines::open_source(&settings.source).await?);
        }
        let source = self.source.as_mut().expect("connected above");
        if let Some(xid) = xid {
            source.wait_visible(xid).await?;
        }
        let batch = source.read_keys(&[id]).await?;
        metrics::counter!(crate::daemon::names::TOAST_REREADS).increment(1);
        Ok(match (batch.rows.into_iter().next(), batch.unreadable.into_iter().next()) {
            (Some(user), _) => Some(Item::Op(ChangeOp::Upsert(user))),
            (None, Some(dead)) => Some(Item::Reject { key: Some(id), reason: dead.reason }),
            (None, None) => None,
        })
    }
}
