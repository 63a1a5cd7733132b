//! In-process tests of the file source: the contract, replaced files and rotation.

use super::*;
use crate::File as FileConnector;

#[tokio::test]
async fn passes_the_source_contract_across_two_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.jsonl"),
        "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.jsonl"), "{\"id\":4}\n\n{\"id\":5}\n").unwrap();
    let path = format!("{}/*.jsonl", dir.path().display());
    connector_api::testkit::source_contract(
        &FileConnector,
        serde_json::json!({"path": path, "schema": [{"name": "id", "type": "int64"}]}),
    )
    .await;
}

#[tokio::test]
async fn a_replaced_file_is_read_again_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.jsonl");
    std::fs::write(&f, "{\"id\":1}\n").unwrap();
    let cfg: FileSourceConfig =
        serde_json::from_value(serde_json::json!({"path": f.display().to_string()})).unwrap();
    let mut s = FileSource::new(cfg.clone()).unwrap();
    s.open(&SourceContext::for_pipeline("t"), &Offsets::new())
        .await
        .unwrap();
    let b = s.next_batch().await.unwrap().unwrap();
    assert_eq!(b.num_rows(), 1);
    // replace the file: new inode, other content, same name
    std::fs::remove_file(&f).unwrap();
    std::fs::write(&f, "{\"id\":7}\n{\"id\":8}\n").unwrap();
    let mut s = FileSource::new(cfg).unwrap();
    s.open(&SourceContext::for_pipeline("t"), &b.offsets)
        .await
        .unwrap();
    let again = s.next_batch().await.unwrap().unwrap();
    assert_eq!(again.num_rows(), 2);
}

/// A watch-mode source of `glob` in `dir` (JSON lines of an `id`), opened.
async fn watching(dir: &std::path::Path, glob: &str) -> FileSource {
    let path = format!("{}/{glob}", dir.display());
    let cfg: FileSourceConfig = serde_json::from_value(
        serde_json::json!({"path": path, "watch": true, "schema": [{"name": "id", "type": "int64"}]}),
    )
    .unwrap();
    let mut s = FileSource::new(cfg).unwrap();
    s.open(&SourceContext::for_pipeline("t"), &Offsets::new())
        .await
        .unwrap();
    s
}

/// The `id` column of `b`.
fn ids(b: &Batch) -> Vec<i64> {
    let col = b.records.column(0).as_any();
    let ids = col.downcast_ref::<arrow_array::Int64Array>().unwrap();
    ids.values().to_vec()
}

/// A file renamed within the glob while its last line is not ended: followed
/// under its new name, the line read once when it ends (not also through the
/// handle kept under the old name).
#[tokio::test]
async fn a_file_renamed_within_the_glob_with_an_unended_line_gives_the_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "{\"id\":1}\n{\"id\":").unwrap();
    let mut s = watching(dir.path(), "app.log*").await;
    assert_eq!(ids(&s.next_batch().await.unwrap().unwrap()), vec![1]);
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // looked at while the line is not ended yet: nothing
    let b = s.next_batch().await.unwrap().unwrap();
    assert_eq!(b.num_rows(), 0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&rotated)
        .unwrap();
    std::io::Write::write_all(&mut f, b"2}\n").unwrap();
    drop(f);
    let mut read = vec![];
    for _ in 0..4 {
        let b = s.next_batch().await.unwrap().unwrap();
        read.extend(if b.num_rows() > 0 { ids(&b) } else { vec![] });
    }
    assert_eq!(read, vec![2]);
}

/// Rotation by rename between the look at kept handles and the listing: the
/// lines written before the rename are read through the handle first, not lost
/// to the new file under the name.
#[tokio::test]
async fn lines_written_before_a_rename_seen_only_by_the_listing_are_read_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "{\"id\":1}\n").unwrap();
    let mut s = watching(dir.path(), "*.log").await;
    let first = s.next_batch().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 1);
    assert!(connector_api::blocking(|| s.read_current())
        .unwrap()
        .is_none());
    assert!(s.handles.contains_key(&log.to_string_lossy().into_owned()));
    // more lines, the rename, the new file: all after the handles were looked at
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\":2}\n{\"id\":3}\n").unwrap();
    drop(f);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&log, "{\"id\":4}\n").unwrap();
    let path = format!("{}/*.log", dir.path().display());
    assert!(s.open_first(list(&path).unwrap()).unwrap());
    let b = s.next_batch().await.unwrap().unwrap();
    assert_eq!(ids(&b), vec![2, 3]);
    let mut read = vec![];
    while let Some(b) = s.next_batch().await.unwrap() {
        if b.is_idle() {
            break;
        }
        if b.num_rows() > 0 {
            read.extend(ids(&b));
        }
    }
    assert_eq!(read, vec![4]);
}

/// A file renamed away whose last line is not ended yet is not read again and
/// again (the source spun on it): the new file under its name is read.
#[tokio::test]
async fn a_renamed_file_with_an_unended_last_line_does_not_hold_up_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "{\"id\":1}\n{\"id\":").unwrap();
    let mut s = watching(dir.path(), "*.log").await;
    assert_eq!(ids(&s.next_batch().await.unwrap().unwrap()), vec![1]);
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::write(&log, "{\"id\":3}\n").unwrap();
    // step by step: the bug looped inside one call
    let (read, _) = step(&mut s).await;
    assert_eq!(read, vec![3]);
    // logrotate's `create`: the writer ends the line in the renamed file after the new
    // one was read; it is read from the old file's own position, once
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&rotated)
        .unwrap();
    std::io::Write::write_all(&mut writer, b"2}\n").unwrap();
    let (read, offsets) = step(&mut s).await;
    assert_eq!(read, vec![2]);
    let name = log.to_string_lossy().into_owned();
    let old: FileOffset = offsets
        .get_typed(&super::follow::detached(
            &name,
            crate::identity::inode(&rotated.metadata().unwrap()),
        ))
        .unwrap()
        .expect("the old file's position under its own key");
    assert_eq!(old.pos, std::fs::metadata(&rotated).unwrap().len());
}

/// A numbered rotation with a glob matching every name: `app.log.1` moves on to
/// `app.log.2` and `app.log` to `app.log.1`. The file now under `app.log.1` was read
/// as `app.log` and goes on from there; nothing is read twice.
#[tokio::test]
async fn a_numbered_rotation_reads_no_file_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let (one, two) = (dir.path().join("app.log.1"), dir.path().join("app.log.2"));
    std::fs::write(&log, "{\"id\":1}\n").unwrap();
    let mut s = watching(dir.path(), "app.log*").await;
    let mut read = step(&mut s).await.0;
    std::fs::rename(&log, &one).unwrap();
    std::fs::write(&log, "{\"id\":2}\n").unwrap();
    read.extend(step(&mut s).await.0);
    std::fs::rename(&one, &two).unwrap();
    std::fs::rename(&log, &one).unwrap();
    std::fs::write(&log, "{\"id\":3}\n").unwrap();
    read.extend(step(&mut s).await.0);
    read.sort();
    assert_eq!(read, vec![1, 2, 3]);
}

/// Reads what the source has now, a look at the directory at a time, taking each
/// batch's offsets as the engine would; the ids read and the offsets handed out.
async fn step(s: &mut FileSource) -> (Vec<i64>, Offsets) {
    let (mut read, mut offsets) = (vec![], Offsets::new());
    for _ in 0..10 {
        if s.current.is_none() && s.ready.is_empty() && !s.pick().unwrap() {
            break;
        }
        while let Some(b) = connector_api::blocking(|| s.read_current()).unwrap() {
            offsets.merge(&b.offsets);
            for (split, value) in b.offsets.iter() {
                let off: FileOffset = serde_json::from_value(value.clone()).unwrap();
                s.known.insert(split.clone(), off);
            }
            if b.num_rows() > 0 {
                read.extend(ids(&b));
            }
        }
    }
    (read, offsets)
}
