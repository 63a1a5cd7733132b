//! Source positions, per split, as small opaque JSON owned by each connector.
//!
//! A split is the unit a source reads in order (a file, a table, a Kafka partition).
//! Each connector defines a typed offset per split (a serde struct) and says on the
//! type whether it is inclusive or exclusive. The runtime never looks inside: it merges
//! them (the later position of a split wins), stores them in the checkpoint store in a
//! versioned envelope, and hands them back to `Source::open` after a restart.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version written in the envelope of stored offsets.
pub const OFFSETS_ENVELOPE_VERSION: u32 = 1;

/// The position of every split a source has advanced, keyed by split id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offsets(BTreeMap<String, serde_json::Value>);

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    splits: Offsets,
}

impl Offsets {
    /// No split has a position.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no split has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of splits with a position.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The raw position of `split`.
    pub fn get(&self, split: &str) -> Option<&serde_json::Value> {
        self.0.get(split)
    }

    /// The position of `split` as the connector's typed offset.
    pub fn get_typed<T: DeserializeOwned>(&self, split: &str) -> Result<Option<T>> {
        self.0
            .get(split)
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| {
                    Error::internal(format!("stored offset of split \"{split}\" is unreadable"))
                        .with_source(e)
                })
            })
            .transpose()
    }

    /// Sets the raw position of `split`.
    pub fn set(&mut self, split: impl Into<String>, offset: serde_json::Value) {
        self.0.insert(split.into(), offset);
    }

    /// Sets the position of `split` from the connector's typed offset.
    pub fn set_typed<T: Serialize>(&mut self, split: impl Into<String>, offset: &T) -> Result<()> {
        let value = serde_json::to_value(offset)
            .map_err(|e| Error::internal("offset does not serialize").with_source(e))?;
        self.0.insert(split.into(), value);
        Ok(())
    }

    /// Removes `split` (e.g. a finished file that will never be read again).
    pub fn remove(&mut self, split: &str) -> Option<serde_json::Value> {
        self.0.remove(split)
    }

    /// The name under which the runtime keeps, beside the splits, how many records
    /// the pipeline has delivered since it began (after its transforms): the ordinal
    /// of the next record, the same in a replay from the same checkpoint. Sources
    /// never see it; sinks get it in `resume` and `flush`.
    pub const RECORDS: &'static str = "_sluice.records";

    /// The records delivered before this position ([`Offsets::RECORDS`]), when kept.
    pub fn records(&self) -> Option<u64> {
        self.0
            .get(Self::RECORDS)
            .and_then(serde_json::Value::as_u64)
    }

    /// Counts `n` more records delivered.
    pub fn add_records(&mut self, n: u64) {
        let next = self.records().unwrap_or(0) + n;
        self.0
            .insert(Self::RECORDS.to_string(), serde_json::json!(next));
    }

    /// The positions of the source's splits alone, without [`Offsets::RECORDS`].
    pub fn splits(&self) -> Offsets {
        let mut out = self.clone();
        out.0.remove(Self::RECORDS);
        out
    }

    /// Takes every position of `later`: a split present in both ends at `later`'s position.
    pub fn merge(&mut self, later: &Offsets) {
        for (k, v) in &later.0 {
            self.0.insert(k.clone(), v.clone());
        }
    }

    /// Iterates `(split, position)` in split order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.0.iter()
    }

    /// Serialises in the versioned envelope the checkpoint store keeps.
    pub fn to_envelope(&self) -> String {
        let env = Envelope {
            version: OFFSETS_ENVELOPE_VERSION,
            splits: self.clone(),
        };
        serde_json::to_string(&env).unwrap_or_else(|_| String::from("{}"))
    }

    /// Reads the versioned envelope written by [`Offsets::to_envelope`].
    pub fn from_envelope(text: &str) -> Result<Self> {
        let env: Envelope = serde_json::from_str(text)
            .map_err(|e| Error::internal("stored offsets are unreadable").with_source(e))?;
        if env.version != OFFSETS_ENVELOPE_VERSION {
            return Err(Error::internal(format!(
                "stored offsets have envelope version {}, this build reads {}",
                env.version, OFFSETS_ENVELOPE_VERSION
            )));
        }
        Ok(env.splits)
    }
}

/// FNV-1a: a small hash that is the same in every build (unlike std's hasher), for
/// names and fingerprints that must survive a restart or an upgrade: a sink names what
/// it writes from the position of its first record, so a replay writes the same names.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hashes naming what a sink starts at a position (files, objects): the same position
/// gives the same names in the same order, so a replay writes what it wrote before,
/// and several started at one position (a dead-letter sink's, whose records carry no
/// offsets, rolled within one flush) do not share a name.
#[derive(Debug, Default)]
pub struct PositionNames {
    position: String,
    started: std::collections::HashMap<String, u64>,
}

impl PositionNames {
    /// The hash of the next output started at `position` in `place` (a folder): the
    /// position's (and place's) alone for the first, numbered after it.
    pub fn next(&mut self, position: &Offsets, place: Option<&str>) -> u64 {
        let envelope = position.to_envelope();
        if envelope != self.position {
            self.position = envelope;
            self.started.clear();
        }
        let mut input = self.position.clone();
        if let Some(place) = place {
            input.push('\0');
            input.push_str(place);
        }
        let n = self.started.entry(input.clone()).or_insert(0);
        if *n > 0 {
            input.push('\0');
            input.push_str(&n.to_string());
        }
        *n += 1;
        stable_hash(input.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_count_travels_with_the_offsets_but_not_to_sources() {
        let mut at = Offsets::new();
        at.set("s", serde_json::json!(7));
        assert_eq!(at.records(), None);
        at.add_records(10);
        at.add_records(5);
        assert_eq!(at.records(), Some(15));
        let back = Offsets::from_envelope(&at.to_envelope()).unwrap();
        assert_eq!(back.records(), Some(15));
        let splits = back.splits();
        assert_eq!(splits.records(), None);
        assert_eq!(
            splits.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["s"]
        );
    }

    #[test]
    fn names_at_one_position_differ_and_repeat_in_a_replay() {
        let mut at = Offsets::new();
        at.set("s", serde_json::json!(1));
        let names = |n: &mut PositionNames| {
            vec![
                n.next(&at, None),
                n.next(&at, Some("a/")),
                n.next(&at, None),
                n.next(&at, Some("a/")),
            ]
        };
        let first = names(&mut PositionNames::default());
        assert_eq!(first, names(&mut PositionNames::default()));
        let mut unique = first.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert_eq!(first[0], stable_hash(at.to_envelope().as_bytes()));
    }

    #[test]
    fn later_position_of_a_split_wins() {
        let mut a = Offsets::new();
        a.set("f1", serde_json::json!(10));
        a.set("f2", serde_json::json!(5));
        let mut b = Offsets::new();
        b.set("f1", serde_json::json!(20));
        a.merge(&b);
        assert_eq!(a.get("f1"), Some(&serde_json::json!(20)));
        assert_eq!(a.get("f2"), Some(&serde_json::json!(5)));
    }

    #[test]
    fn envelope_round_trips_and_rejects_other_versions() {
        let mut a = Offsets::new();
        a.set("x", serde_json::json!({"pos": 3}));
        let text = a.to_envelope();
        assert_eq!(Offsets::from_envelope(&text).unwrap(), a);
        assert!(Offsets::from_envelope(r#"{"version":9,"splits":{}}"#).is_err());
    }
}
