//! The delivery state in PostgreSQL (`linkflow_postgres::PgDelivery`), shared by every node,
//! with a lease per endpoint so that one node delivers to it at a time
//! ([`crate::delivery::DeliveryState::lease`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use linkflow_postgres::PgDelivery;

use crate::delivery::{
    Attempt, DeliveryState, DeliveryStateError, Disabled, Endpoint, MAX_ATTEMPTS_SHOWN,
    MAX_ENDPOINTS, MAX_REDELIVERIES,
};
use crate::notify::{NotificationId, NotificationKind};

/// [`DeliveryState`] in the database, as one node (`holder`) sees it.
pub struct PgDeliveryState {
    tables: PgDelivery,
    holder: String,
}

impl PgDeliveryState {
    /// The state in `tables`, for a node named `holder` (unique per process).
    pub fn new(tables: PgDelivery, holder: String) -> Self {
        PgDeliveryState { tables, holder }
    }
}

fn failed(error: linkflow_store::StoreError) -> DeliveryStateError {
    DeliveryStateError::Io {
        path: "PostgreSQL".into(),
        source: std::io::Error::other(error.to_string()),
    }
}

fn damaged(what: &str, reason: impl std::fmt::Display) -> DeliveryStateError {
    DeliveryStateError::Damaged {
        path: format!("PostgreSQL {what}").into(),
        reason: reason.to_string(),
    }
}

impl DeliveryState for PgDeliveryState {
    fn endpoints(&self) -> Result<Vec<Endpoint>, DeliveryStateError> {
        self.tables
            .endpoints()
            .map_err(failed)?
            .into_iter()
            .map(|(id, document)| {
                serde_json::from_str(&document)
                    .map_err(|error| damaged(&format!("endpoint {id}"), error))
            })
            .collect()
    }

    fn add_endpoint(
        &self,
        url: &str,
        secret: Option<String>,
        types: Option<Vec<NotificationKind>>,
        now: DateTime<Utc>,
    ) -> Result<Endpoint, DeliveryStateError> {
        let endpoint = Endpoint::new(url, secret, types, now)?;
        let document = serde_json::to_string(&endpoint).expect("an endpoint serializes");
        if !self
            .tables
            .insert_endpoint(endpoint.id.clone(), document, MAX_ENDPOINTS as i64)
            .map_err(failed)?
        {
            return Err(DeliveryStateError::TooMany);
        }
        Ok(endpoint)
    }

    fn remove_endpoint(&self, id: &str) -> Result<bool, DeliveryStateError> {
        self.tables.delete_endpoint(id.to_owned()).map_err(failed)
    }

    fn set_disabled(&self, id: &str, disabled: Option<Disabled>) -> Result<(), DeliveryStateError> {
        let mut endpoint = self
            .endpoints()?
            .into_iter()
            .find(|endpoint| endpoint.id == id)
            .ok_or_else(|| DeliveryStateError::UnknownEndpoint(id.to_owned()))?;
        endpoint.disabled = disabled;
        let document = serde_json::to_string(&endpoint).expect("an endpoint serializes");
        if !self
            .tables
            .update_endpoint(id.to_owned(), document)
            .map_err(failed)?
        {
            return Err(DeliveryStateError::UnknownEndpoint(id.to_owned()));
        }
        Ok(())
    }

    fn cursor(&self, endpoint: &str) -> Result<Option<NotificationId>, DeliveryStateError> {
        match self.tables.cursor(endpoint.to_owned()).map_err(failed)? {
            None => Ok(None),
            Some(text) => NotificationId::parse(&text)
                .map(Some)
                .ok_or_else(|| damaged(&format!("cursor of {endpoint}"), format!("`{text}`"))),
        }
    }

    fn set_cursor(
        &self,
        endpoint: &str,
        through: NotificationId,
    ) -> Result<(), DeliveryStateError> {
        if self
            .tables
            .set_cursor(
                endpoint.to_owned(),
                through.to_string(),
                self.holder.clone(),
            )
            .map_err(failed)?
        {
            Ok(())
        } else {
            Err(DeliveryStateError::LeaseLost(endpoint.to_owned()))
        }
    }

    fn record(&self, attempt: &Attempt) -> Result<(), DeliveryStateError> {
        self.record_many(std::slice::from_ref(attempt))
    }

    fn record_many(&self, attempts: &[Attempt]) -> Result<(), DeliveryStateError> {
        let mut by_endpoint: Vec<(String, Vec<String>)> = Vec::new();
        for attempt in attempts {
            let document = serde_json::to_string(attempt).expect("an attempt serializes");
            match by_endpoint
                .iter_mut()
                .find(|(id, _)| *id == attempt.endpoint)
            {
                Some((_, documents)) => documents.push(document),
                None => by_endpoint.push((attempt.endpoint.clone(), vec![document])),
            }
        }
        for (endpoint, documents) in by_endpoint {
            self.tables.record(endpoint, documents).map_err(failed)?;
        }
        Ok(())
    }

    fn attempts(
        &self,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Attempt>, DeliveryStateError> {
        let limit = limit.clamp(1, MAX_ATTEMPTS_SHOWN) as i64;
        self.tables
            .attempts(endpoint.map(str::to_owned), limit)
            .map_err(failed)?
            .into_iter()
            .map(|document| {
                serde_json::from_str(&document).map_err(|error| damaged("attempt", error))
            })
            .collect()
    }

    fn request_redelivery(
        &self,
        endpoint: &str,
        notification: NotificationId,
    ) -> Result<(), DeliveryStateError> {
        if !self.endpoints()?.iter().any(|e| e.id == endpoint) {
            return Err(DeliveryStateError::UnknownEndpoint(endpoint.to_owned()));
        }
        if !self
            .tables
            .request_redelivery(
                endpoint.to_owned(),
                notification.to_string(),
                MAX_REDELIVERIES as i64,
            )
            .map_err(failed)?
        {
            return Err(DeliveryStateError::Invalid(format!(
                "{MAX_REDELIVERIES} redeliveries wait for {endpoint} already"
            )));
        }
        Ok(())
    }

    fn take_redeliveries(&self, endpoint: &str) -> Result<Vec<NotificationId>, DeliveryStateError> {
        self.tables
            .take_redeliveries(endpoint.to_owned())
            .map_err(failed)?
            .into_iter()
            .map(|text| {
                NotificationId::parse(&text)
                    .ok_or_else(|| damaged("redelivery", format!("`{text}`")))
            })
            .collect()
    }

    fn lease(&self, endpoint: &str, ttl: Duration) -> Result<bool, DeliveryStateError> {
        self.tables
            .lease(
                endpoint.to_owned(),
                self.holder.clone(),
                i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            )
            .map_err(failed)
    }

    fn release(&self, endpoint: &str) -> Result<(), DeliveryStateError> {
        self.tables
            .release(endpoint.to_owned(), self.holder.clone())
            .map_err(failed)
    }
}
