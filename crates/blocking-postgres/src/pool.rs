//! [`Manager`]: r2d2's connection manager for this client (cargo feature `r2d2`).
use crate::client::{Client, Connector, TransactionStatus};
use crate::error::Error;

/// Opens connections with one [`Connector`]; a connection is given back to the pool only
/// if it is not broken and not inside a transaction.
#[derive(Debug)]
pub struct Manager {
    connector: Connector,
}

impl Manager {
    pub fn new(connector: Connector) -> Manager {
        Manager { connector }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Client;
    type Error = Error;

    fn connect(&self) -> Result<Client, Error> {
        self.connector.connect()
    }

    /// One round trip (an empty query); r2d2 calls it on checkout if `test_on_check_out`.
    fn is_valid(&self, client: &mut Client) -> Result<(), Error> {
        client.is_valid()
    }

    /// A connection that broke, or that was left inside a transaction (a `BEGIN` run by
    /// hand and never ended), is dropped rather than handed to the next user.
    fn has_broken(&self, client: &mut Client) -> bool {
        client.is_broken() || client.transaction_status() != TransactionStatus::Idle
    }
}
