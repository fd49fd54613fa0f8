//! What queries hand back: [`Statement`] (a statement prepared on one connection, with its
//! parameter types and columns), [`Column`], [`Row`] (one row of the extended protocol, in
//! binary format, read through [`FromSql`]) and [`SimpleRow`] (one row of a simple query,
//! in text). Rows own their bytes; they are cut from one DataRow message, so one row is
//! never larger than `max_message_len`.
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, RowDescriptionBody};

use crate::error::Error;
use crate::types::{FromSql, Type};

/// A prepared statement. Cheap to clone; valid only on the connection that prepared it
/// (using it on another is an error, not a wrong query).
#[derive(Clone, Debug)]
pub struct Statement {
    inner: Arc<StatementInner>,
}

#[derive(Debug)]
struct StatementInner {
    /// The server-side name, unique on its connection.
    name: String,
    /// Which connection prepared it (`Client`'s id).
    client_id: u64,
    sql: String,
    params: Vec<Type>,
    columns: Arc<[Column]>,
}

/// A column of a result: its name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_: Type,
}

/// One row of a query's result.
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Column]>,
    body: Bytes,
    /// Where each value lies in `body`; `None` for NULL.
    ranges: Vec<Option<Range<usize>>>,
}

/// One row of a simple query's result: each value as the server's text, `None` for NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleRow {
    pub columns: Arc<[String]>,
    pub values: Vec<Option<String>>,
}

impl Statement {
    pub(crate) fn new(
        name: String,
        client_id: u64,
        sql: String,
        params: Vec<Type>,
        columns: Arc<[Column]>,
    ) -> Statement {
        Statement {
            inner: Arc::new(StatementInner {
                name,
                client_id,
                sql,
                params,
                columns,
            }),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    pub fn sql(&self) -> &str {
        &self.inner.sql
    }

    /// The parameter types, as the server inferred them.
    pub fn params(&self) -> &[Type] {
        &self.inner.params
    }

    pub fn columns(&self) -> &[Column] {
        &self.inner.columns
    }

    pub(crate) fn shared_columns(&self) -> Arc<[Column]> {
        self.inner.columns.clone()
    }
}

impl Row {
    /// A row from a DataRow message, checked against the statement's columns.
    pub(crate) fn new(columns: Arc<[Column]>, body: DataRowBody) -> Result<Row, String> {
        let ranges = value_ranges(&body, columns.len())?;
        Ok(Row {
            columns,
            body: body.buffer_bytes().clone(),
            ranges,
        })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The value of column `index` (from 0) as a `T`; `Option<T>` for a column that may be
    /// NULL.
    pub fn get<T: FromSql>(&self, index: usize) -> Result<T, Error> {
        let column = self.columns.get(index).ok_or_else(|| Error::Usage {
            detail: format!(
                "column {index} asked of a row of {} columns",
                self.columns.len()
            ),
        })?;
        let raw = self.ranges[index].clone().map(|range| &self.body[range]);
        T::from_sql(column.type_, raw).map_err(|detail| Error::Conversion {
            detail: format!("column {index} ({:?}): {detail}", column.name),
        })
    }

    /// The value of the column named `name` (the first of that name).
    pub fn get_named<T: FromSql>(&self, name: &str) -> Result<T, Error> {
        let index = self
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::Usage {
                detail: format!(
                    "no column named {name:?} in this row (it has: {})",
                    self.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        self.get(index)
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl SimpleRow {
    /// The text of the column named `name`; `None` for NULL or no such column.
    pub fn get(&self, name: &str) -> Option<&str> {
        let index = self.columns.iter().position(|c| c == name)?;
        self.values.get(index)?.as_deref()
    }
}

/// The columns of a RowDescription.
pub(crate) fn columns(body: &RowDescriptionBody) -> Result<Vec<Column>, String> {
    // One by one, not by the announced count (see `value_ranges`).
    let mut columns = Vec::new();
    let mut fields = body.fields();
    while let Some(field) = fields
        .next()
        .map_err(|e| format!("a malformed row description ({e})"))?
    {
        columns.push(Column {
            name: field.name().to_owned(),
            type_: Type(field.type_oid()),
        });
    }
    Ok(columns)
}

/// A simple query's row: values as text.
pub(crate) fn simple_row(columns: Arc<[String]>, body: &DataRowBody) -> Result<SimpleRow, String> {
    let ranges = value_ranges(body, columns.len())?;
    let buffer = body.buffer();
    let values = ranges
        .into_iter()
        .map(|range| range.map(|range| String::from_utf8_lossy(&buffer[range]).into_owned()))
        .collect();
    Ok(SimpleRow { columns, values })
}

/// Where each of a DataRow's values lies, checked to be `expected` values. Collected one by
/// one, not by the count the message announces, so a lying count allocates nothing.
fn value_ranges(body: &DataRowBody, expected: usize) -> Result<Vec<Option<Range<usize>>>, String> {
    let mut ranges = Vec::with_capacity(expected);
    let mut iter = body.ranges();
    while let Some(range) = iter.next().map_err(|e| format!("a malformed row ({e})"))? {
        if ranges.len() == expected {
            return Err(format!("a row of more values than its {expected} columns"));
        }
        ranges.push(range);
    }
    if ranges.len() != expected {
        return Err(format!(
            "a row of {} values where the result has {expected} columns",
            ranges.len()
        ));
    }
    Ok(ranges)
}
