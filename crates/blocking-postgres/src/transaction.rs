//! [`Transaction`]: a `BEGIN` on a [`Client`], committed with [`Transaction::commit`] or
//! rolled back when dropped. It derefs to the client, so statements run inside it with
//! the client's own methods.
use std::ops::{Deref, DerefMut};

use crate::client::{Client, TransactionStatus};
use crate::error::Error;

/// An open transaction. Dropped without `commit` (an early return on an error, a panic),
/// it is rolled back; if even that fails, the connection is marked broken so that a pool
/// discards it rather than hand out a connection stuck in a transaction.
pub struct Transaction<'a> {
    client: &'a mut Client,
    /// Set by `commit` and `rollback`, so `Drop` has nothing to do.
    finished: bool,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(client: &'a mut Client) -> Transaction<'a> {
        Transaction {
            client,
            finished: false,
        }
    }

    /// `COMMIT`. If a statement of the transaction had failed, the server has rolled it
    /// back instead, and this says so (an error, not a silent loss).
    ///
    /// If the connection is lost during `COMMIT`, whether the transaction committed is
    /// unknown: the caller's retry must be idempotent (as conditional updates are).
    pub fn commit(mut self) -> Result<(), Error> {
        self.finished = true;
        let failed_before = self.client.transaction_status() == TransactionStatus::Failed;
        let (_, tags) = self.client.simple("COMMIT")?;
        if failed_before || tags.last().map(String::as_str) == Some("ROLLBACK") {
            return Err(Error::Usage {
                detail: "COMMIT rolled the transaction back, because a statement in it had failed: nothing of it was written; handle that statement's error".to_owned(),
            });
        }
        Ok(())
    }

    /// `ROLLBACK`.
    pub fn rollback(mut self) -> Result<(), Error> {
        self.finished = true;
        self.client.batch_execute("ROLLBACK")
    }
}

impl Deref for Transaction<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.finished || self.client.is_broken() {
            return;
        }
        if let Err(e) = self.client.batch_execute("ROLLBACK") {
            log::debug!("ROLLBACK of an abandoned transaction failed: {e}");
            self.client.mark_broken();
        }
    }
}
