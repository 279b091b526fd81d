//! The schema registry, through Confluent's REST API: the writer schema of an Avro record by
//! its id, fetched once and kept ([`AvroSchemas`]).
//!
//! What the registry answers decides what happens to the record. A schema it serves is parsed
//! and kept; an id it does not know, or a schema that is not Avro, is kept as refused, and
//! every record written with it is dead-lettered with the reason. A registry that cannot
//! answer (down, slow, 5xx, credentials refused) is [`RegistryError`]: the record is not
//! decided at all, and its partition waits and reads it again (ARCHITECTURE.md §5).

use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;

use crate::config::SchemaRegistryConfig;
use crate::ingest::avro::{AvroSchemas, Lookup, WriterSchema};
use crate::runtime::telemetry::Metrics;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("schema registry at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("schema registry at {url} answered {status} for {path}: {body}")]
    Status {
        url: String,
        path: String,
        status: u16,
        body: String,
    },
}

pub struct Registry {
    http: reqwest::Client,
    url: String,
    username: Option<String>,
    password: Option<String>,
    schemas: Arc<AvroSchemas>,
}

/// `GET /schemas/ids/{id}`.
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    /// Absent for Avro, which predates the field.
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

impl Registry {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistryError> {
        let url = config.url.trim().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| RegistryError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            url,
            username: config.username.clone(),
            password: config.password.clone(),
            schemas: Arc::default(),
        })
    }

    /// The schemas fetched so far, for the decoder.
    pub fn schemas(&self) -> Arc<AvroSchemas> {
        Arc::clone(&self.schemas)
    }

    /// Makes sure the writer schemas of a record's key and value (where they are Avro) are
    /// known, found or refused; asks the registry for those that are not.
    pub async fn ensure(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        metrics: &Metrics,
    ) -> Result<(), RegistryError> {
        for id in self.schemas.missing(key, value) {
            let lookup = self.fetch(id).await;
            metrics.registry_lookup(match &lookup {
                Ok(Lookup::Found(_)) => "found",
                Ok(Lookup::Refused(_)) => "refused",
                Err(_) => "unavailable",
            });
            match lookup? {
                Lookup::Refused(reason) => {
                    tracing::warn!(id, %reason, "schema id refused: its records go to the dead-letter topic");
                    self.schemas.insert(id, Lookup::Refused(reason));
                }
                found => self.schemas.insert(id, found),
            }
        }
        Ok(())
    }

    async fn fetch(&self, id: u32) -> Result<Lookup, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let (status, body) = self.get(&path).await?;
        match status {
            200 => {}
            // Confluent's 40403 "Schema not found"; Apicurio answers the same.
            404 => {
                return Ok(Lookup::Refused(
                    "the schema registry has no schema with this id".into(),
                ))
            }
            _ => {
                return Err(RegistryError::Status {
                    url: self.url.clone(),
                    path,
                    status,
                    body: body.chars().take(300).collect(),
                })
            }
        }
        let answer: SchemaById = match serde_json::from_str(&body) {
            Ok(answer) => answer,
            Err(e) => {
                return Ok(Lookup::Refused(
                    format!("the registry's answer is not a schema: {e}").into(),
                ))
            }
        };
        if let Some(other) = answer.schema_type.filter(|t| t != "AVRO") {
            return Ok(Lookup::Refused(
                format!("a {other} schema, and harmony reads Avro").into(),
            ));
        }
        Ok(match WriterSchema::parse(id, &answer.schema) {
            Ok(writer) => Lookup::Found(Arc::new(writer)),
            Err(e) => Lookup::Refused(e.to_string().into()),
        })
    }

    async fn get(&self, path: &str) -> Result<(u16, String), RegistryError> {
        let mut request = self.http.get(format!("{}{path}", self.url)).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        let unreachable = |e: reqwest::Error| RegistryError::Unreachable {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(unreachable)?;
        Ok((status, body))
    }
}
