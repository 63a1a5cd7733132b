//! Bad input in pipeline files: precise errors, exit code 2, nothing written.

use crate::support::{sluice, workdir};

fn check(toml: &str, expect: &[&str]) {
    let dir = workdir();
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    for e in expect {
        assert!(run.stderr.contains(e), "expected {e:?} in:\n{}", run.stderr);
    }
    assert!(
        !dir.path().join("out").exists(),
        "a config error must not write anything"
    );
    assert!(
        !dir.path().join(".sluice").exists(),
        "a config error must not create state"
    );
}

#[test]
fn broken_toml_names_file_line_and_column() {
    check(
        "[source\nconnector = \"datagen\"\n",
        &["p.toml:1:", "invalid TOML"],
    );
}

#[test]
fn unknown_key_is_located_and_a_suggestion_given() {
    check(
        "[source]\nconnector = \"datagen\"\ncount = 3\n\n[sink]\nconnector = \"file\"\npath = \"out/x\"\nformt = \"json\"\n",
        &["p.toml:8:1", "unknown field `formt`", "did you mean `format`?"],
    );
}

/// A CDC source into a table sink in insert mode would add deletes as rows: refused
/// before anything is created (no slot, no table), naming the sink's mode; a transform
/// dropping `_op` makes plain rows of the changes, and passes.
#[test]
fn changes_into_an_insert_mode_table_sink_are_refused_before_anything_is_created() {
    let cdc = "[source]\nconnector = \"postgres\"\nurl = \"postgres://nobody@127.0.0.1:1/x\"\ntables = [\"t\"]\nmode = \"cdc\"\n";
    check(
        &format!("{cdc}[sinks.pg]\nconnector = \"postgres\"\nurl = \"postgres://nobody@127.0.0.1:1/x\"\ntable = \"t2\"\n"),
        &[
            "p.toml:",
            "[sinks.pg]: table \"t2\": change records (with _op) need mode = \"upsert\"",
            "[source] emits changes",
        ],
    );
    check(
        &format!("{cdc}[sink]\nconnector = \"sqlite\"\npath = \"out/x.db\"\ntable = \"t2\"\nmode = \"insert\"\n"),
        &["p.toml:10:", "[sink]: table \"t2\": change records"],
    );
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        format!("{cdc}[[transforms]]\ntype = \"drop\"\nfields = [\"_op\"]\n[sink]\nconnector = \"sqlite\"\npath = \"out/x.db\"\ntable = \"t2\"\n"),
    )
    .unwrap();
    let run = sluice(dir.path(), &["validate", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn two_file_sinks_into_one_directory_are_refused_naming_both() {
    check(
        "[source]\nconnector = \"datagen\"\ncount = 10\n\
         [sinks.a]\nconnector = \"file\"\npath = \"out\"\n\
         [sinks.b]\nconnector = \"file\"\npath = \"./out/\"\nformat = \"csv\"\n",
        &[
            "p.toml:7:",
            "[sinks.b] writes where [sinks.a] does (directory \"",
            "give each sink a place of its own",
        ],
    );
    check(
        "[source]\nconnector = \"datagen\"\ncount = 10\n[sink]\nconnector = \"file\"\npath = \"out\"\n\
         [errors]\ntolerance = \"all\"\n[errors.dead_letter]\nconnector = \"file\"\npath = \"out\"\n",
        &["[errors.dead_letter] writes where [sink] does"],
    );
}

#[test]
fn a_transform_naming_a_field_the_declared_schema_lacks_is_refused() {
    let source = "[source]\nconnector = \"file\"\npath = \"in.jsonl\"\n\
                  schema = [{ name = \"id\", type = \"int64\" }, { name = \"status\", type = \"string\" }]\n";
    check(
        &format!(
            "{source}[[transforms]]\ntype = \"rename\"\nfields = {{ status = \"state\" }}\n\
             [[transforms]]\ntype = \"filter\"\nfield = \"status\"\nop = \"ne\"\nvalue = \"x\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n"
        ),
        &[
            "p.toml:8:",
            "`transforms[1]`",
            "field \"status\" is not in the batch",
            "from the source's schema, the records here have \"id\", \"state\"",
        ],
    );
    // a filter value of the wrong type for its field is caught the same way
    check(
        &format!(
            "{source}[[transforms]]\ntype = \"filter\"\nfield = \"id\"\nop = \"gt\"\nvalue = \"ten\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n"
        ),
        &["`transforms[0]`", "\"id\""],
    );
}

#[test]
fn unknown_connector_lists_a_suggestion() {
    check(
        "[source]\nconnector = \"datagem\"\n[sink]\nconnector = \"file\"\npath = \"out/x\"\n",
        &[
            "p.toml:2:1",
            "unknown connector \"datagem\"",
            "did you mean \"datagen\"?",
        ],
    );
}

#[test]
fn missing_env_var_is_named() {
    check(
        "[source]\nconnector = \"file\"\npath = \"${env:SLUICE_IT_NOT_SET}\"\n[sink]\nconnector = \"file\"\npath = \"out/x\"\n",
        &["p.toml:3:8", "environment variable SLUICE_IT_NOT_SET is not set"],
    );
}

#[test]
fn wrong_type_names_the_key() {
    check(
        "[source]\nconnector = \"datagen\"\ncount = \"many\"\n[sink]\nconnector = \"file\"\npath = \"out/x\"\n",
        &["p.toml:3:1", "`source.count`", "invalid type"],
    );
}

#[test]
fn every_example_config_validates() {
    let dir = workdir();
    let run = sluice(dir.path(), &["validate", "configs"]);
    assert_eq!(
        run.code,
        Some(0),
        "stderr: {}\nstdout: {}",
        run.stderr,
        run.stdout
    );
    let count = std::fs::read_dir(dir.path().join("configs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert!(count >= 5);
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.ends_with(")") && l.contains(": ok"))
            .count(),
        count,
        "{}",
        run.stdout
    );
}

#[test]
fn describe_prints_documented_options_and_connectors_lists_builtins() {
    let dir = workdir();
    let run = sluice(dir.path(), &["describe", "file"]);
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout.contains("watch  (boolean, default false)"),
        "{}",
        run.stdout
    );
    let run = sluice(dir.path(), &["connectors"]);
    for n in ["datagen", "file", "sqlite", "blackhole"] {
        assert!(run.stdout.contains(n), "{}", run.stdout);
    }
    // a connector that is both says what each side does
    let postgres = run.stdout.lines().find(|l| l.starts_with("postgres "));
    assert!(
        postgres.is_some_and(|l| l.contains("source: ")
            && l.contains("cdc (snapshot, then changes")
            && l.contains("; sink: PostgreSQL tables via COPY")),
        "{}",
        run.stdout
    );
    let run = sluice(dir.path(), &["describe", "fiel"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("did you mean \"file\"?"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_required_option_points_at_its_section() {
    check(
        "[source]\nconnector = \"datagen\"\n\n[sink]\nconnector = \"file\"\nformat = \"json\"\n",
        &["p.toml:4:", "`sink`: missing field `path`"],
    );
}

/// A checkpoint store that is not a SQLite database stops the run at once (no
/// restarts), naming the file and the way out; `sluice offsets reset` sets it aside
/// and the next run starts over.
#[test]
fn a_state_file_that_is_no_database_stops_at_once_and_offsets_reset_recovers() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "[source]\nconnector = \"datagen\"\ncount = 100\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join(".sluice")).unwrap();
    std::fs::write(d.join(".sluice/state.db"), "not a database\n".repeat(600)).unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(".sluice/state.db")
            && run.stderr.contains("is not a SQLite database")
            && run.stderr.contains("sluice offsets reset")
            && !run.stderr.contains("restarting"),
        "{}",
        run.stderr
    );
    let reset = sluice(d, &["offsets", "reset", "p.toml"]);
    assert_eq!(reset.code, Some(0), "{}", reset.stderr);
    assert!(reset.stdout.contains("set aside as"), "{}", reset.stdout);
    let aside: Vec<_> = std::fs::read_dir(d.join(".sluice"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(crate::support::jsonl_lines(&d.join("out")).len(), 100);
}

/// The file sink's state file deleted between runs, the checkpoint kept: the next run
/// stops naming the state file instead of writing over the published files; with this
/// pipeline's files moved away it writes everything again.
#[test]
fn a_deleted_file_sink_state_stops_the_run_instead_of_overwriting() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "name = \"p\"\n[source]\nconnector = \"datagen\"\ncount = 100\n[sink]\nconnector = \"file\"\npath = \"out\"\nmax_records = 25\n[batch]\nmax_records = 25\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let published = || -> Vec<(String, std::time::SystemTime)> {
        let mut files: Vec<_> = std::fs::read_dir(d.join("out"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().modified().unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = published();
    assert_eq!(before.len(), 4);
    std::fs::remove_file(d.join("out/.sluice-p.state.json")).unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(".sluice-p.state.json")
            && run
                .stderr
                .contains("4 file(s) of pipeline \"p\" are published here")
            && !run.stderr.contains("restarting"),
        "{}",
        run.stderr
    );
    assert_eq!(published(), before, "published files were written over");
    std::fs::rename(d.join("out"), d.join("moved")).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(crate::support::jsonl_lines(&d.join("out")).len(), 100);
}
