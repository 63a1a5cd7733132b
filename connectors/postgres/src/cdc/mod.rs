//! Change data capture with the built-in `pgoutput` plugin over the streaming
//! replication protocol: one replication connection (`START_REPLICATION SLOT ...
//! LOGICAL`) streams the changes as the server decodes them, and the position the
//! server may release WAL up to is confirmed only when the runtime commits, i.e.
//! after every sink has flushed and the checkpoint was stored: a crash anywhere
//! re-reads, never loses. What the catalog must say before and while streaming (the
//! publication covers the table, the table is the one read before, its out-of-line
//! values reach the change) is in [`catalog`]; the messages in [`pgoutput`].

pub mod catalog;
pub mod pgoutput;
pub mod replication;

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A name PostgreSQL accepts for a slot: lowercase letters, digits, underscores.
pub fn slot_name(pipeline: &str) -> String {
    let s: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("sluice_{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(slot_name("My-Pipe 1"), "sluice_my_pipe_1");
    }
}
