//! The RabbitMQ sink: persistent, mandatory publishes with publisher confirms; `flush`
//! waits for every confirm, and a message the broker could not route or store fails
//! it, naming exchange and routing key.

use arrow_array::RecordBatch;
use connector_api::{Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use sluice_formats::messages::{
    column_texts, record_headers, sink_payloads, AvroSink, PayloadFormat, Payloads,
};

use crate::config::RabbitSinkConfig;
use crate::conn::{amqp_error, connect, disconnect};

/// Publishes records to an exchange.
pub struct RabbitSink {
    config: RabbitSinkConfig,
    conn: Option<Connection>,
    channel: Option<Channel>,
    /// Confirms not yet awaited, with each message's routing key.
    confirms: Vec<(PublisherConfirm, String)>,
    name: String,
    /// `format = "avro"`: the registry and subject.
    avro: Option<AvroSink>,
}

/// Publishes started together.
const PUBLISH_CHUNK: usize = 1024;

/// Publishes whose confirms are not awaited yet, at most.
const MAX_UNCONFIRMED: usize = 32_768;

/// How long `flush` waits for the broker's confirms before the run goes back to its
/// checkpoint.
const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl RabbitSink {
    /// A sink for `config` (validated).
    pub fn new(config: RabbitSinkConfig) -> Self {
        RabbitSink {
            config,
            conn: None,
            channel: None,
            confirms: Vec::new(),
            name: String::new(),
            avro: None,
        }
    }

    /// Waits for every confirm: a nack sends the run back to its checkpoint, a
    /// returned (unroutable) message stops it, naming where it went.
    async fn await_confirms(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.confirms);
        let (futures, keys): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
        let exchange = self.config.exchange.clone();
        let all = futures::future::join_all(futures);
        let confirmed = tokio::time::timeout(CONFIRM_WAIT, all).await.map_err(|_| {
            Error::new(
                ErrorKind::Aborted,
                format!(
                    "rabbitmq: exchange \"{exchange}\": no publisher confirm within {} s (a queue without its quorum?)",
                    CONFIRM_WAIT.as_secs()
                ),
            )
        })?;
        for (done, key) in confirmed.into_iter().zip(keys) {
            match done.map_err(|e| amqp_error("waiting for publisher confirms", e))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                    return Err(Error::config(format!(
                        "rabbitmq: exchange \"{exchange}\" routed a message with routing key \"{key}\" to no queue (returned: {} {}): bind a queue, or fix routing_key",
                        returned.reply_code, returned.reply_text
                    ))
                    .with_field("routing_key"))
                }
                Confirmation::Nack(None) => {
                    return Err(Error::new(
                        ErrorKind::Aborted,
                        format!("rabbitmq: the broker did not store a message to exchange \"{exchange}\" (nack)"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Routing keys, headers and payloads of `records`.
    async fn outgoing(
        &mut self,
        records: &RecordBatch,
    ) -> Result<(Vec<String>, Vec<FieldTable>, Payloads)> {
        let keys: Vec<String> = match &self.config.routing_key_column {
            Some(name) => column_texts(records, name, "routing_key_column")?
                .into_iter()
                .map(|k| k.unwrap_or_else(|| self.config.routing_key.clone()))
                .collect(),
            None => vec![self.config.routing_key.clone(); records.num_rows()],
        };
        let headers = record_headers(records, self.config.headers_column.as_deref())?
            .into_iter()
            .map(|pairs| {
                let mut table = FieldTable::default();
                for (k, v) in pairs {
                    let v = match v {
                        Some(v) => AMQPValue::LongString(v.into()),
                        None => AMQPValue::Void,
                    };
                    table.insert(k.as_str().into(), v);
                }
                table
            })
            .collect();
        let payloads = sink_payloads(
            records,
            self.config.format,
            &self.config.json,
            self.avro.as_mut(),
            self.config.include_metadata,
            &[
                self.config.routing_key_column.as_deref(),
                self.config.headers_column.as_deref(),
            ],
        )
        .await?;
        Ok((keys, headers, payloads))
    }
}

#[connector_api::async_trait]
impl Sink for RabbitSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.name = ctx.sink.clone();
        self.avro = AvroSink::new(
            self.config.format,
            self.config.schema_registry.as_ref(),
            self.config.schema_subject.as_deref(),
            self.config.destination(),
            &self.config.record_name,
        )?;
        let (conn, channel) =
            connect(&self.config.url, &format!("sluice {} sink", ctx.pipeline)).await?;
        if !self.config.exchange.is_empty() {
            let exchange = self.config.exchange.clone();
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    amqp_error(format!("exchange \"{exchange}\""), e).with_field("exchange")
                })?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp_error("turning on publisher confirms", e))?;
        self.channel = Some(channel);
        self.conn = Some(conn);
        Ok(SinkState::default())
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (keys, headers, payloads) = self.outgoing(&batch.records).await?;
        let content_type = match self.config.format {
            PayloadFormat::Json => Some("application/json"),
            PayloadFormat::String => Some("text/plain"),
            PayloadFormat::Bytes | PayloadFormat::Avro => None,
        };
        let mode = if self.config.persistent { 2 } else { 1 };
        let props: Vec<BasicProperties> = headers
            .into_iter()
            .map(|h| {
                let mut props = BasicProperties::default().with_delivery_mode(mode);
                if let Some(t) = content_type {
                    props = props.with_content_type(t.into());
                }
                match h.inner().is_empty() {
                    true => props,
                    false => props.with_headers(h),
                }
            })
            .collect();
        let rows: Vec<usize> = (0..keys.len()).collect();
        for part in rows.chunks(PUBLISH_CHUNK) {
            let channel = self
                .channel
                .as_ref()
                .ok_or_else(|| Error::internal("rabbitmq sink is not open"))?;
            // a publish resolves once the connection's writer sent it: started
            // together (in order: each queues its frames when first polled), they go
            // out in one write instead of one wake-up each
            let sent = futures::future::join_all(part.iter().map(|&r| {
                channel.basic_publish(
                    self.config.exchange.as_str().into(),
                    keys[r].as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    payloads.get(r),
                    props[r].clone(),
                )
            }))
            .await;
            for (confirm, &r) in sent.into_iter().zip(part) {
                let confirm = confirm.map_err(|e| amqp_error("publishing", e))?;
                self.confirms.push((confirm, keys[r].clone()));
            }
            if self.confirms.len() >= MAX_UNCONFIRMED {
                self.await_confirms().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, _offsets: &Offsets) -> Result<()> {
        self.await_confirms().await
    }

    async fn close(&mut self) -> Result<()> {
        self.confirms.clear();
        disconnect(self.conn.take(), self.channel.take()).await;
        Ok(())
    }
}

/// `sluice check`: the broker answers and the exchange exists.
pub async fn check(config: &RabbitSinkConfig) -> Result<()> {
    let mut sink = RabbitSink::new(config.clone());
    let opened = sink
        .open(&SinkContext::for_pipeline("check"))
        .await
        .map(|_| ());
    let _ = sink.close().await;
    opened
}
