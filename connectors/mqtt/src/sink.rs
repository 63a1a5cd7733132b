//! The MQTT sink: publishes to a topic (or each record's topic), `flush` waiting for
//! every acknowledgement (`PUBACK`, or `PUBCOMP` at QoS 2). At least once; QoS 0 at
//! most once.

use arrow_array::RecordBatch;
use connector_api::{Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use sluice_formats::messages::{
    column_texts, record_headers, refuse, sink_payloads, AvroSink, Payloads,
};

use crate::config::MqttSinkConfig;
use crate::conn::{client_error, connect, lost, qos, Link, Note, Setup};

/// Publishes records.
pub struct MqttSink {
    config: MqttSinkConfig,
    link: Option<Link>,
    /// Publishes not yet acknowledged.
    pending: u64,
    name: String,
    /// `format = "avro"`: the registry and subject.
    avro: Option<AvroSink>,
}

/// What each record is published as.
struct Outgoing {
    topics: Vec<String>,
    /// User properties.
    props: Vec<Vec<(String, String)>>,
    payloads: Payloads,
}

/// Publishes in flight at most before `write` waits for acknowledgements.
const MAX_PENDING: u64 = 16_384;

impl MqttSink {
    /// A sink for `config` (validated).
    pub fn new(config: MqttSinkConfig) -> Self {
        MqttSink {
            config,
            link: None,
            pending: 0,
            name: String::new(),
            avro: None,
        }
    }

    /// Waits until at most `left` publishes are unacknowledged.
    async fn await_acks(&mut self, left: u64) -> Result<()> {
        let link = self
            .link
            .as_mut()
            .ok_or_else(|| Error::internal("mqtt sink is not open"))?;
        while self.pending > left {
            match tokio::time::timeout(std::time::Duration::from_secs(60), link.notes.recv()).await
            {
                Err(_) => return Err(lost("no acknowledgement within 60 s")),
                Ok(None) => return Err(lost("the event loop stopped")),
                Ok(Some(Note::Lost(why))) => return Err(lost(&why)),
                Ok(Some(Note::Acked(Ok(())))) => self.pending -= 1,
                Ok(Some(Note::Acked(Err(why)))) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("mqtt: the broker refused a publish: {why}"),
                    ))
                }
                Ok(Some(_)) => {}
            }
        }
        Ok(())
    }

    /// Topics, user properties and payloads of `records`; rows without a topic are
    /// refused before anything is sent.
    async fn outgoing(&mut self, records: &RecordBatch) -> Result<Outgoing> {
        let topics: Vec<String> = match &self.config.topic_column {
            Some(name) => column_texts(records, name, "topic_column")?
                .into_iter()
                .map(|t| t.or_else(|| self.config.topic.clone()).unwrap_or_default())
                .collect(),
            None => vec![self.config.topic.clone().unwrap_or_default(); records.num_rows()],
        };
        let found = topics
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_empty() || t.contains(['+', '#', '\0']))
            .map(|(r, t)| (r, format!("\"{t}\" is not a topic to publish to")))
            .collect();
        refuse(records, found, &self.name)?;
        let props = record_headers(records, self.config.headers_column.as_deref())?
            .into_iter()
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or_default()))
                    .collect()
            })
            .collect();
        let payloads = sink_payloads(
            records,
            self.config.format,
            &self.config.json,
            self.avro.as_mut(),
            self.config.include_metadata,
            &[
                self.config.topic_column.as_deref(),
                self.config.headers_column.as_deref(),
            ],
        )
        .await?;
        Ok(Outgoing {
            topics,
            props,
            payloads,
        })
    }
}

#[connector_api::async_trait]
impl Sink for MqttSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.name = ctx.sink.clone();
        self.pending = 0;
        self.avro = AvroSink::new(
            self.config.format,
            self.config.schema_registry.as_ref(),
            self.config.schema_subject.as_deref(),
            self.config.destination(),
            &self.config.record_name,
        )?;
        let client_id = self
            .config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-{}", ctx.pipeline, ctx.sink));
        self.link = Some(
            connect(
                &self.config.url,
                Setup {
                    client_id,
                    session: None,
                    receive_maximum: 100,
                    manual_acks: false,
                },
            )
            .await?,
        );
        Ok(SinkState::default())
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let Outgoing {
            topics,
            props,
            payloads,
        } = self.outgoing(&batch.records).await?;
        let qos = qos(self.config.qos);
        for (r, (topic, user)) in topics.into_iter().zip(props).enumerate() {
            let properties = PublishProperties {
                user_properties: user,
                ..Default::default()
            };
            let link = self
                .link
                .as_ref()
                .ok_or_else(|| Error::internal("mqtt sink is not open"))?;
            link.client
                .publish_with_properties(
                    topic,
                    qos,
                    self.config.retain,
                    payloads.get(r).to_vec(),
                    properties,
                )
                .await
                .map_err(|e| client_error("publishing", e))?;
            if qos != QoS::AtMostOnce {
                self.pending += 1;
                if self.pending >= MAX_PENDING {
                    self.await_acks(MAX_PENDING / 2).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self, _offsets: &Offsets) -> Result<()> {
        self.await_acks(0).await
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            let _ = link.client.disconnect().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// `sluice check`: the broker accepts a connection.
pub async fn check(config: &MqttSinkConfig) -> Result<()> {
    let mut sink = MqttSink::new(config.clone());
    sink.open(&SinkContext::for_pipeline("check")).await?;
    sink.close().await
}
