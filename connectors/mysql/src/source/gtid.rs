//! Where a stored position is read again. A binlog file and offset mean something only
//! on the server they were read on: after a failover to a replica, the same file name
//! may hold other transactions, or not exist. So the offset names the server it was
//! read on (`@@server_id`) and, on MariaDB, carries the GTID state after the last
//! delivered transaction (the last GTID of each replication domain). On that server
//! reading resumes at the file and offset; on another it resumes by GTID, which every
//! server of the replication topology knows; without a GTID state (MySQL, whose GTID
//! sets are not kept here) it is an error naming both servers and the way out.

use std::collections::BTreeMap;
use std::fmt;

use connector_api::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::error::my_error;
use crate::source::position::BinlogOffset;

/// MariaDB's GTID state: the last GTID (`domain-server-seq`) of each domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidState(BTreeMap<u32, String>);

impl GtidState {
    /// The state of `text` (`0-1-10,1-2-7`); GTIDs that do not parse are left out.
    pub fn parse(text: &str) -> GtidState {
        let mut state = GtidState::default();
        for gtid in text.split(',') {
            state.apply(gtid.trim());
        }
        state
    }

    /// After a transaction of `gtid`: its domain's last GTID. Anything but three
    /// numbers is left out (the state is written into SQL).
    pub fn apply(&mut self, gtid: &str) {
        let parts: Vec<&str> = gtid.split('-').collect();
        if let [domain, server, seq] = parts[..] {
            if let (Ok(domain), Ok(server), Ok(seq)) = (
                domain.parse::<u32>(),
                server.parse::<u32>(),
                seq.parse::<u64>(),
            ) {
                self.0.insert(domain, format!("{domain}-{server}-{seq}"));
            }
        }
    }

    /// Whether `gtid` is its domain's last GTID here.
    pub fn holds(&self, gtid: &str) -> bool {
        self.0.values().any(|g| g == gtid)
    }

    /// No domain known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.0.values().map(String::as_str).collect();
        f.write_str(&list.join(","))
    }
}

/// How a stored position is read again on the server connected to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// At its file and offset (the server it was read on).
    Position,
    /// By its GTID state (another server of the topology).
    Gtid(String),
}

/// The server's `@@server_id`.
pub async fn server_id(conn: &mut Conn) -> Result<u32> {
    let id: Option<u32> = conn
        .query_first("SELECT @@server_id")
        .await
        .map_err(|e| my_error("read the server's server_id", e))?;
    id.ok_or_else(|| Error::internal("the server has no server_id"))
}

/// How `at` is read again on server `here` (MariaDB or not).
pub fn resume(at: &BinlogOffset, here: u32, mariadb: bool) -> Result<Resume> {
    match at.read_on {
        Some(there) if there != here => match &at.gtids {
            Some(state) if mariadb && !state.is_empty() => Ok(Resume::Gtid(state.clone())),
            _ => Err(Error::config(format!(
                "the stored position ({} {}) was read on server {there}, but this is server {here}, and there is \
                 no GTID state to find it by here{}: read the table again from a new snapshot (reset the \
                 pipeline's offsets)",
                at.file,
                at.pos,
                if mariadb { "" } else { " (MySQL GTID sets are not kept)" }
            ))
            .with_field("url")),
        },
        _ => Ok(Resume::Position),
    }
}

/// The GTID state at `file` `pos` on MariaDB (`BINLOG_GTID_POS`).
pub async fn state_at(conn: &mut Conn, file: &str, pos: u64) -> Result<GtidState> {
    let state: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos))
        .await
        .map_err(|e| my_error(format!("read the GTID state at binlog {file} {pos}"), e))?;
    Ok(GtidState::parse(&state.flatten().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(read_on: Option<u32>, gtids: Option<&str>) -> BinlogOffset {
        BinlogOffset {
            file: "binlog.000003".into(),
            pos: 1234,
            skip: 0,
            gtid: None,
            gtids: gtids.map(str::to_string),
            read_on,
            exact: true,
        }
    }

    #[test]
    fn the_state_keeps_the_last_gtid_of_each_domain() {
        let mut state = GtidState::parse("0-1-10, 1-2-7");
        state.apply("0-3-11");
        state.apply("no gtid");
        state.apply("1-2-3'; DROP TABLE t; --");
        assert_eq!(state.to_string(), "0-3-11,1-2-7");
        assert!(GtidState::parse("").is_empty());
    }

    #[test]
    fn another_server_resumes_by_gtid_or_stops() {
        assert_eq!(
            resume(&at(Some(7), None), 7, true).unwrap(),
            Resume::Position
        );
        // positions stored before servers were named: where they were read
        assert_eq!(resume(&at(None, None), 8, true).unwrap(), Resume::Position);
        assert_eq!(
            resume(&at(Some(7), Some("0-7-5")), 8, true).unwrap(),
            Resume::Gtid("0-7-5".into())
        );
        let err = resume(&at(Some(7), None), 8, true).unwrap_err();
        assert!(
            err.to_string().contains("server 7, but this is server 8"),
            "{err}"
        );
        assert!(resume(&at(Some(7), Some("0-7-5")), 8, false).is_err());
    }
}
