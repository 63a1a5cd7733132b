//! End-to-end tests: the real `sluice` binary against real files and services,
//! verified with clients this project did not write (sqlite3, pyarrow).
//!
//! One test binary with modules (see STYLE.md: every extra binary relinks Arrow).
//! Run through `integration-tests/run.sh`, which builds the binary and installs the
//! clients first.

mod cli_errors;
mod crash;
mod file_follow;
mod iceberg;
mod kafka;
mod kafka_avro;
mod kafka_fanout;
mod kafka_group;
mod mqtt;
mod mysql;
mod mysql_cdc;
mod mysql_cdc_ddl;
mod mysql_cdc_fanout;
mod mysql_failover;
mod nats;
mod plugins;
mod postgres;
mod postgres_cdc;
mod postgres_cdc_fanout;
mod postgres_cdc_faults;
mod postgres_cdc_load;
mod postgres_incremental;
mod postgres_restart;
mod progress;
mod quickstart;
mod rabbitmq;
mod redis;
mod redis_avro;
mod roundtrip;
mod s3;
mod service;
mod shared;
mod shared_splits;
mod sql_transforms;
mod sqlite_incremental;
mod sqlite_io;
mod support;
mod tolerance;
mod watch;
