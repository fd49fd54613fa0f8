//! Aborted transactions and control records: fetches are read_committed, so the broker
//! names the transactions aborted in what it sends (producer id, first offset), and their
//! data batches are skipped, as are the control records (commit and abort markers) that end
//! every transaction.
use std::collections::HashSet;

use bytes::Bytes;

use crate::wire::header::be_i16;

/// One partition's aborted transactions, across the batches of one fetch.
pub(super) struct Transactions {
    /// Aborted transactions not reached yet, by first offset, the lowest last.
    aborted: Vec<(i64, i64)>,
    /// Producers whose transaction is being aborted: reached their first offset, not yet
    /// their abort marker.
    aborting: HashSet<i64>,
}

impl Transactions {
    /// `aborted`: (producer id, first offset) of each aborted transaction, as the broker
    /// lists them, in any order.
    pub(super) fn new(mut aborted: Vec<(i64, i64)>) -> Transactions {
        aborted.sort_by_key(|(_, first)| std::cmp::Reverse(*first));
        Transactions {
            aborted,
            aborting: HashSet::new(),
        }
    }

    /// Called with each batch's last offset, in log order: the aborted transactions that
    /// begin at or before it are under way.
    pub(super) fn reach(&mut self, last: i64) {
        while self.aborted.last().is_some_and(|(_, first)| *first <= last) {
            if let Some((pid, _)) = self.aborted.pop() {
                self.aborting.insert(pid);
            }
        }
    }

    /// Whether a transactional data batch of `producer_id` belongs to an aborted
    /// transaction under way: then it is skipped.
    pub(super) fn aborts(&self, producer_id: i64) -> bool {
        self.aborting.contains(&producer_id)
    }

    /// A control record of `producer_id`: an abort marker ends its aborted transaction.
    /// Its key is the marker's version (i16) and type (i16: 0 abort, 1 commit).
    pub(super) fn control_record(&mut self, producer_id: i64, key: Option<&Bytes>) {
        let is_abort = key.is_some_and(|k| k.len() >= 4 && be_i16(&k[2..4]) == 0);
        if is_abort {
            self.aborting.remove(&producer_id);
        }
    }

    /// The producer's transaction ended, whatever its marker said (a marker batch given up
    /// undecoded: markers carry no data, and either kind ends the transaction).
    pub(super) fn end(&mut self, producer_id: i64) {
        self.aborting.remove(&producer_id);
    }
}
