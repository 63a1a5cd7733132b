//! Connector plugins: the template crate built as a cdylib and loaded by the real
//! binary, both directions; the same contract suite built in and loaded; panics
//! isolated to their pipeline; refused libraries (wrong ABI, not a plugin, clashing
//! name) and a missing directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{jsonl_lines, sluice, sluice_bin, workdir};

/// A plugin directory holding the libraries built next to the sluice binary.
fn plugin_dir(dir: &Path, libs: &[&str]) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let target = sluice_bin().parent().unwrap().to_path_buf();
    for lib in libs {
        let file = format!("lib{lib}.so");
        let from = target.join(&file);
        assert!(
            from.exists(),
            "{} is missing: run.sh builds it (cargo build -p {})",
            from.display(),
            lib.replace('_', "-")
        );
        std::fs::copy(&from, plugins.join(&file)).unwrap();
    }
    plugins
}

#[test]
fn template_plugin_runs_a_pipeline_in_both_directions() {
    let dir = workdir();
    let d = dir.path();
    plugin_dir(d, &["sluice_template"]);
    let run = sluice(d, &["--plugin-dir", "plugins", "connectors"]);
    assert!(
        run.stdout.lines().any(|l| l.starts_with("template")
            && l.contains("source,sink")
            && l.contains("[plugin ")),
        "{}",
        run.stdout
    );

    // plugin source -> built-in sink
    std::fs::write(
        d.join("from.toml"),
        "[source]\nconnector = \"template\"\ncount = 2500\nword = \"hi\"\n[sink]\nconnector = \"file\"\npath = \"out/from\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(d, &["--plugin-dir", "plugins", "run", "from.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines = jsonl_lines(&d.join("out/from"));
    assert_eq!(lines.len(), 2500);
    assert_eq!(lines[0], "{\"id\":0,\"word\":\"hi\"}");
    assert_eq!(lines[2499], "{\"id\":2499,\"word\":\"hi\"}");

    // built-in source -> plugin sink, with the plugin directory named in the file
    std::fs::write(
        d.join("to.toml"),
        "[plugins]\ndirs = [\"plugins\"]\n[source]\nconnector = \"file\"\npath = \"out/from/*.jsonl\"\n\
         schema = [{ name = \"id\", type = \"int64\" }, { name = \"word\", type = \"string\" }]\n\
         [sink]\nconnector = \"template\"\npath = \"out/to.jsonl\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "to.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text = std::fs::read_to_string(d.join("out/to.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2500);
    assert!(
        text.contains("{\"id\":\"1234\",\"word\":\"hi\"}"),
        "{}",
        &text[..200]
    );
}

#[test]
fn a_panicking_plugin_fails_only_its_own_pipeline() {
    let dir = workdir();
    let d = dir.path();
    plugin_dir(d, &["sluice_testplug"]);
    std::fs::write(
        d.join("a.toml"),
        "[source]\nconnector = \"panicky\"\n[sink]\nconnector = \"blackhole\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.toml"),
        "[source]\nconnector = \"datagen\"\ncount = 50000\nrate = 100000\n[sink]\nconnector = \"file\"\npath = \"out/b\"\nformat = \"json\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("c.toml"),
        "[source]\nconnector = \"datagen\"\ncount = 10\n[sink]\nconnector = \"panicky\"\n",
    )
    .unwrap();
    let run = sluice(
        d,
        &[
            "--plugin-dir",
            "plugins",
            "run",
            "a.toml",
            "b.toml",
            "c.toml",
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("pipeline \"a\" failed")
            && run.stderr.contains("plugin panicked: boom in next_batch"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("pipeline \"c\" failed")
            && run.stderr.contains("plugin panicked: boom in write"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("b: 50000 records"),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert_eq!(jsonl_lines(&d.join("out/b")).len(), 50000);
    // the clashing connector of the same library was refused, the rest loaded
    assert!(
        run.stderr
            .contains("source connector \"file\" clashes with the built-in connector"),
        "{}",
        run.stderr
    );
}

fn compile_c(dir: &Path, name: &str, code: &str) {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, code).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(format!("{name}.so")))
        .arg(&src)
        .status()
        .expect("cc");
    assert!(status.success());
    std::fs::remove_file(src).unwrap();
}

#[test]
fn wrong_abi_and_non_plugin_libraries_are_refused_and_the_others_load() {
    let dir = workdir();
    let d = dir.path();
    let plugins = plugin_dir(d, &["sluice_template"]);
    compile_c(
        &plugins,
        "abi999",
        "unsigned int sluice_plugin_abi_version(void) { return 999; }\n",
    );
    compile_c(&plugins, "notaplugin", "int answer(void) { return 42; }\n");
    let run = sluice(d, &["--plugin-dir", "plugins", "connectors"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("abi999.so\" refused: it speaks plugin ABI version 999"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("notaplugin.so\" refused: not a sluice plugin"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("template"), "{}", run.stdout);

    let run = sluice(d, &["--plugin-dir", "no-such-dir", "connectors"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("plugin directory \"no-such-dir\""),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_suite_passes_built_in_and_loaded_as_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path(), &["sluice_template"]);
    let provided = runtime::plugin::load(&plugins.join("libsluice_template.so"))
        .expect("load the template plugin");
    let config = serde_json::json!({"count": 11});
    connector_api::testkit::source_contract(&sluice_template::Template, config.clone()).await;
    let out = |n: &str| serde_json::json!({"path": dir.path().join(n).display().to_string()});
    connector_api::testkit::sink_contract(
        &sluice_template::Template,
        out("built-in.jsonl"),
        connector_api::testkit::id_batches(7, 3),
    )
    .await;
    let mut ran = 0;
    for p in provided {
        match p {
            runtime::plugin::Provided::Source(c) => {
                connector_api::testkit::source_contract(c.as_ref(), config.clone()).await;
                ran += 1;
            }
            runtime::plugin::Provided::Sink(c) => {
                connector_api::testkit::sink_contract(
                    c.as_ref(),
                    out("plugin.jsonl"),
                    connector_api::testkit::id_batches(7, 3),
                )
                .await;
                ran += 1;
            }
        }
    }
    assert_eq!(ran, 2);
    let a = std::fs::read_to_string(dir.path().join("built-in.jsonl")).unwrap();
    let b = std::fs::read_to_string(dir.path().join("plugin.jsonl")).unwrap();
    assert_eq!(
        a, b,
        "built in and as a plugin, the sink writes the same bytes"
    );
}
