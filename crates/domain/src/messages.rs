//! The versioned JSON bodies sent over RabbitMQ: billing charges and job invocations.
//!
//! Versioning: every body carries an integer `"schema_version"` field on the wire (currently 1).
//! The Rust structs hold only the current version's fields; (de)serialization goes through a
//! private wire struct that writes the version and refuses any other or a missing one, so a
//! consumer never half-reads a body it does not understand (it dead-letters it instead).
//! Unknown extra fields are ignored, so adding an optional field does not need a new version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;
use crate::pricing::Usage;

/// A priced call to settle: published to `billing_log_queue` after a call or job succeeded.
///
/// `request_id` is unique per call (the job id for jobs), which makes settlement idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BillingWire", into = "BillingWire")]
pub struct BillingMessage {
    pub request_id: Uuid,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: i64,
    pub model_name: String,
    pub usage: Usage,
    pub cost: Money,
    /// The credit lease the call was admitted against, when it was (else its hold, found by
    /// its request id, is what settling releases): settling takes the charge from that lease.
    pub lease_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// Several charges in one body of `billing_log_queue`: the gateway sends the charges of calls
/// that finished at about the same moment together, so the broker stores and delivers one
/// message instead of one per call. Each charge keeps its own request id, so settling a batch
/// twice (redelivery) changes nothing, like settling one charge twice.
///
/// Wire shape: `{"schema_version": 1, "charges": [<billing message>, ...]}`, each charge in the
/// single-charge shape (with its own `schema_version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BatchWire", into = "BatchWire")]
pub struct BillingBatch {
    pub charges: Vec<BillingMessage>,
}

/// A job to run: published to `model_invocation_queue` when a job is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "InvocationWire", into = "InvocationWire")]
pub struct InvocationMessage {
    pub job_id: Uuid,
}

impl BillingMessage {
    /// The `schema_version` this build writes and the only one it reads.
    pub const SCHEMA_VERSION: u32 = 1;

    /// The JSON body to publish.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        to_json_bytes(self)
    }

    /// Reads a published body; refuses malformed JSON and any `schema_version` but 1.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl BillingBatch {
    /// The `schema_version` of the batch envelope this build writes and the only one it reads.
    pub const SCHEMA_VERSION: u32 = 1;

    /// What to publish for charges that finished together: the body (the one-charge shape for
    /// one charge, a batch for more) and a message id naming the first charge and how many
    /// follow it. `None` for no charges.
    pub fn publishable(charges: Vec<BillingMessage>) -> Option<(Vec<u8>, String)> {
        match charges.as_slice() {
            [] => None,
            [one] => Some((one.to_json_bytes(), one.request_id.to_string())),
            [first, rest @ ..] => {
                let id = format!("{}+{}", first.request_id, rest.len());
                Some((BillingBatch { charges }.to_json_bytes(), id))
            }
        }
    }

    /// The JSON body to publish.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        to_json_bytes(self)
    }

    /// Reads a body of `billing_log_queue`: a batch, or a single charge (a batch of one). An
    /// empty batch, an unknown version of either shape or any undecodable charge refuses the
    /// whole body.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Body {
            Batch(BatchProbe),
            One(serde::de::IgnoredAny),
        }
        #[derive(Deserialize)]
        struct BatchProbe {
            #[allow(dead_code)]
            charges: serde::de::IgnoredAny,
        }
        match serde_json::from_slice::<Body>(bytes)? {
            Body::Batch(_) => serde_json::from_slice(bytes),
            Body::One(_) => Ok(BillingBatch {
                charges: vec![BillingMessage::from_json_slice(bytes)?],
            }),
        }
    }
}

impl InvocationMessage {
    /// The `schema_version` this build writes and the only one it reads.
    pub const SCHEMA_VERSION: u32 = 1;

    /// The JSON body to publish.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        to_json_bytes(self)
    }

    /// Reads a published body; refuses malformed JSON and any `schema_version` but 1.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn to_json_bytes<T: Serialize>(message: &T) -> Vec<u8> {
    // Only strings, integers, UUIDs, RFC 3339 times and string-keyed structs: serializing cannot fail.
    #[allow(clippy::expect_used)]
    serde_json::to_vec(message).expect("bus messages always serialize to JSON")
}

fn check_version(kind: &str, found: u32, supported: u32) -> Result<(), String> {
    if found == supported {
        Ok(())
    } else {
        Err(format!(
            "unsupported {kind} message schema_version {found} (this build reads {supported})"
        ))
    }
}

/// The billing message as it is on the wire.
#[derive(Serialize, Deserialize)]
struct BillingWire {
    schema_version: u32,
    request_id: Uuid,
    user_id: i64,
    access_key_id: Option<i64>,
    model_id: i64,
    model_name: String,
    usage: Usage,
    cost: Money,
    /// Absent in bodies of earlier builds (which wrote an always-null `hold_id`, now ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
}

impl From<BillingMessage> for BillingWire {
    fn from(m: BillingMessage) -> Self {
        BillingWire {
            schema_version: BillingMessage::SCHEMA_VERSION,
            request_id: m.request_id,
            user_id: m.user_id,
            access_key_id: m.access_key_id,
            model_id: m.model_id,
            model_name: m.model_name,
            usage: m.usage,
            cost: m.cost,
            lease_id: m.lease_id,
            occurred_at: m.occurred_at,
        }
    }
}

impl TryFrom<BillingWire> for BillingMessage {
    type Error = String;

    fn try_from(w: BillingWire) -> Result<Self, Self::Error> {
        check_version("billing", w.schema_version, BillingMessage::SCHEMA_VERSION)?;
        Ok(BillingMessage {
            request_id: w.request_id,
            user_id: w.user_id,
            access_key_id: w.access_key_id,
            model_id: w.model_id,
            model_name: w.model_name,
            usage: w.usage,
            cost: w.cost,
            lease_id: w.lease_id,
            occurred_at: w.occurred_at,
        })
    }
}

/// The batch envelope as it is on the wire.
#[derive(Serialize, Deserialize)]
struct BatchWire {
    schema_version: u32,
    charges: Vec<BillingMessage>,
}

impl From<BillingBatch> for BatchWire {
    fn from(b: BillingBatch) -> Self {
        BatchWire {
            schema_version: BillingBatch::SCHEMA_VERSION,
            charges: b.charges,
        }
    }
}

impl TryFrom<BatchWire> for BillingBatch {
    type Error = String;

    fn try_from(w: BatchWire) -> Result<Self, Self::Error> {
        check_version(
            "billing batch",
            w.schema_version,
            BillingBatch::SCHEMA_VERSION,
        )?;
        if w.charges.is_empty() {
            return Err("a billing batch holds at least one charge".to_owned());
        }
        Ok(BillingBatch { charges: w.charges })
    }
}

/// The invocation message as it is on the wire.
#[derive(Serialize, Deserialize)]
struct InvocationWire {
    schema_version: u32,
    job_id: Uuid,
}

impl From<InvocationMessage> for InvocationWire {
    fn from(m: InvocationMessage) -> Self {
        InvocationWire {
            schema_version: InvocationMessage::SCHEMA_VERSION,
            job_id: m.job_id,
        }
    }
}

impl TryFrom<InvocationWire> for InvocationMessage {
    type Error = String;

    fn try_from(w: InvocationWire) -> Result<Self, Self::Error> {
        check_version(
            "invocation",
            w.schema_version,
            InvocationMessage::SCHEMA_VERSION,
        )?;
        Ok(InvocationMessage { job_id: w.job_id })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn billing() -> BillingMessage {
        BillingMessage {
            request_id: Uuid::parse_str("0190f0b2-6a1e-7c3d-9b5a-2f4e6d8c0a12").unwrap(),
            user_id: 42,
            access_key_id: Some(7),
            model_id: 3,
            model_name: "gpt-4o-mini".to_owned(),
            usage: Usage {
                prompt_tokens: 1234,
                completion_tokens: 567,
                cached_prompt_tokens: 34,
                images: 0,
                cache_write_prompt_tokens: 0,
            },
            cost: Money::parse("0.0005253").unwrap(),
            lease_id: None,
            occurred_at: DateTime::parse_from_rfc3339("2025-01-02T03:04:05.123456789Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn billing_round_trip_is_exact() {
        let message = billing();
        let bytes = message.to_json_bytes();
        let back = BillingMessage::from_json_slice(&bytes).unwrap();
        assert_eq!(back, message);
        assert_eq!(back.cost.to_string(), "0.0005253");
        assert_eq!(back.occurred_at, message.occurred_at);
    }

    #[test]
    fn billing_wire_shape() {
        let value: Value = serde_json::from_slice(&billing().to_json_bytes()).unwrap();
        assert_eq!(
            value,
            json!({
                "schema_version": 1,
                "request_id": "0190f0b2-6a1e-7c3d-9b5a-2f4e6d8c0a12",
                "user_id": 42,
                "access_key_id": 7,
                "model_id": 3,
                "model_name": "gpt-4o-mini",
                "usage": {"prompt_tokens": 1234, "completion_tokens": 567, "cached_prompt_tokens": 34, "images": 0},
                "cost": "0.0005253",
                "occurred_at": "2025-01-02T03:04:05.123456789Z"
            })
        );
        // Admitted against a lease: the lease is named.
        let leased = BillingMessage {
            lease_id: Some(Uuid::from_u128(7)),
            ..billing()
        };
        let value: Value = serde_json::from_slice(&leased.to_json_bytes()).unwrap();
        assert_eq!(value["lease_id"], "00000000-0000-0000-0000-000000000007");
        assert_eq!(
            BillingMessage::from_json_slice(&leased.to_json_bytes()).unwrap(),
            leased
        );
    }

    #[test]
    fn a_body_of_an_earlier_build_still_reads() {
        let mut value: Value = serde_json::from_slice(&billing().to_json_bytes()).unwrap();
        value["hold_id"] = Value::Null; // what earlier builds wrote
        let back = BillingMessage::from_json_slice(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(back, billing());
    }

    #[test]
    fn billing_refuses_other_or_missing_versions() {
        let mut value: Value = serde_json::from_slice(&billing().to_json_bytes()).unwrap();
        value["schema_version"] = json!(2);
        let err =
            BillingMessage::from_json_slice(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported billing message schema_version 2"),
            "{err}"
        );
        value["schema_version"] = json!("1");
        assert!(BillingMessage::from_json_slice(&serde_json::to_vec(&value).unwrap()).is_err());
        value.as_object_mut().unwrap().remove("schema_version");
        let err =
            BillingMessage::from_json_slice(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("missing field `schema_version`"),
            "{err}"
        );
    }

    #[test]
    fn billing_ignores_unknown_fields_and_refuses_bad_money() {
        let mut value: Value = serde_json::from_slice(&billing().to_json_bytes()).unwrap();
        value["added_later"] = json!("x");
        assert_eq!(
            BillingMessage::from_json_slice(&serde_json::to_vec(&value).unwrap()).unwrap(),
            billing()
        );
        value["cost"] = json!("1e3");
        assert!(BillingMessage::from_json_slice(&serde_json::to_vec(&value).unwrap()).is_err());
        assert!(BillingMessage::from_json_slice(b"not json").is_err());
    }

    #[test]
    fn batch_round_trip_and_wire_shape() {
        let mut second = billing();
        second.request_id = Uuid::parse_str("0190f0b2-6a1e-7c3d-9b5a-2f4e6d8c0a13").unwrap();
        second.cost = Money::parse("12.5").unwrap();
        let batch = BillingBatch {
            charges: vec![billing(), second],
        };
        let bytes = batch.to_json_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["schema_version"], json!(1));
        assert_eq!(value["charges"].as_array().unwrap().len(), 2);
        assert_eq!(value["charges"][0]["schema_version"], json!(1));
        assert_eq!(value["charges"][1]["cost"], json!("12.5"));
        assert_eq!(BillingBatch::from_json_slice(&bytes).unwrap(), batch);
    }

    #[test]
    fn publishable_uses_the_one_charge_shape_for_one_and_a_batch_for_more() {
        assert!(BillingBatch::publishable(Vec::new()).is_none());
        let (body, id) = BillingBatch::publishable(vec![billing()]).unwrap();
        assert_eq!(body, billing().to_json_bytes());
        assert_eq!(id, billing().request_id.to_string());
        let mut second = billing();
        second.request_id = Uuid::parse_str("0190f0b2-6a1e-7c3d-9b5a-2f4e6d8c0a13").unwrap();
        let charges = vec![billing(), second.clone(), second];
        let (body, id) = BillingBatch::publishable(charges.clone()).unwrap();
        assert_eq!(id, format!("{}+2", billing().request_id));
        assert_eq!(
            BillingBatch::from_json_slice(&body).unwrap().charges,
            charges
        );
    }

    #[test]
    fn a_single_charge_body_reads_as_a_batch_of_one() {
        let read = BillingBatch::from_json_slice(&billing().to_json_bytes()).unwrap();
        assert_eq!(read.charges, vec![billing()]);
    }

    #[test]
    fn batch_refuses_bad_envelopes_and_bad_charges() {
        let good: Value = serde_json::from_slice(&billing().to_json_bytes()).unwrap();
        let refuse = |body: Value, needle: &str| {
            let err =
                BillingBatch::from_json_slice(&serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        };
        refuse(
            json!({"schema_version": 2, "charges": [good.clone()]}),
            "unsupported billing batch message schema_version 2",
        );
        refuse(
            json!({"schema_version": 1, "charges": []}),
            "at least one charge",
        );
        refuse(json!({"charges": [good.clone()]}), "schema_version");
        let mut bad = good.clone();
        bad["cost"] = json!("1e3");
        assert!(
            BillingBatch::from_json_slice(
                &serde_json::to_vec(&json!({"schema_version": 1, "charges": [good.clone(), bad]}))
                    .unwrap()
            )
            .is_err()
        );
        let mut old = good;
        old["schema_version"] = json!(7);
        refuse(old, "unsupported billing message schema_version 7");
        assert!(BillingBatch::from_json_slice(b"[1,2]").is_err());
        assert!(BillingBatch::from_json_slice(b"not json").is_err());
    }

    #[test]
    fn invocation_round_trip_and_versioning() {
        let message = InvocationMessage {
            job_id: Uuid::parse_str("5b0c2d1e-0000-4000-8000-000000000001").unwrap(),
        };
        let bytes = message.to_json_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"schema_version":1,"job_id":"5b0c2d1e-0000-4000-8000-000000000001"}"#
        );
        assert_eq!(InvocationMessage::from_json_slice(&bytes).unwrap(), message);
        let err = InvocationMessage::from_json_slice(
            br#"{"schema_version":9,"job_id":"5b0c2d1e-0000-4000-8000-000000000001"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported invocation message schema_version 9"),
            "{err}"
        );
        assert!(
            InvocationMessage::from_json_slice(
                br#"{"job_id":"5b0c2d1e-0000-4000-8000-000000000001"}"#
            )
            .is_err()
        );
        assert!(
            InvocationMessage::from_json_slice(br#"{"schema_version":1,"job_id":"nope"}"#).is_err()
        );
    }
}
