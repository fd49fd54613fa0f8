//! The metadata thread: asks any broker (the best the [`BrokerBook`] knows, not only the
//! bootstrap servers) for the topic's partitions and leaders whenever the facade wants
//! them, on connections of its own, so that a broker slow to answer a fetch or a
//! heartbeat never delays learning where partitions went. When to ask (at once after a
//! leader error, with backoff and jitter while one persists, every so often otherwise) is
//! the facade's decision; requests that pile up while one is answered are answered by the
//! next.
//!
//! [`BrokerBook`]: crate::cluster::book::BrokerBook
use crossbeam_channel::{Receiver, Sender};

use crate::cluster::{Cluster, TopicState};
use crate::consumer::events::{Event, Inner, Snapshot};

/// What the facade asks of the metadata thread. It stops when the sender is dropped.
#[derive(Debug)]
pub(crate) enum Command {
    Refresh,
}

/// Runs the metadata thread until `commands` is dropped.
pub(crate) fn run(
    mut cluster: Cluster,
    topic: String,
    commands: Receiver<Command>,
    events: Sender<Event>,
) {
    while let Ok(Command::Refresh) = commands.recv() {
        // Requests that came meanwhile are answered by this refresh.
        while commands.try_recv().is_ok() {}
        let result = cluster.refresh(&topic).map(|state| Snapshot {
            leaders: match state {
                TopicState::Missing => Vec::new(),
                TopicState::Partitions(_) => cluster.leaders().into_iter().collect(),
            },
        });
        if events.send(Event(Inner::Metadata(result))).is_err() {
            return;
        }
    }
}
