//! The routes of outbound delivery: `GET`/`POST /v1/endpoints`, `PATCH`/`DELETE
//! /v1/endpoints/{id}`, `GET /v1/deliveries`, `POST /v1/deliveries/redeliver`. They read and
//! change the delivery state [`crate::HttpConfig::delivery`] names (the same files the CLI
//! changes); a server without one answers 409 `delivery_unavailable`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use linkflow::delivery::{DeliveryState, DeliveryStateError, Disabled, MAX_ATTEMPTS_SHOWN};
use linkflow::{NotificationId, NotificationKind};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{ApiError, AppState, ErrorBody};

fn delivery(state: &AppState) -> Result<Arc<dyn DeliveryState>, ApiError> {
    state.config.delivery.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "delivery_unavailable",
            "this server has no delivery state configured (HttpConfig::delivery)",
        )
    })
}

/// Changes need the API token to be configured: they hand out secrets.
fn token_required(state: &AppState) -> Result<(), ApiError> {
    if state.config.token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_required",
            "changing endpoints over HTTP needs the API token to be configured (LINKFLOW_TOKEN)",
        ));
    }
    Ok(())
}

fn refused(error: DeliveryStateError) -> ApiError {
    match error {
        DeliveryStateError::Invalid(detail) => ApiError::bad_request("invalid_endpoint", detail),
        DeliveryStateError::UnknownEndpoint(id) => ApiError::not_found(format!("no endpoint {id}")),
        DeliveryStateError::TooMany => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_endpoints",
            error.to_string(),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "delivery_state",
            other.to_string(),
        ),
    }
}

/// Runs a blocking call on the delivery state.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    call: impl FnOnce(&dyn DeliveryState) -> Result<T, DeliveryStateError> + Send + 'static,
) -> Result<T, ApiError> {
    let delivery = delivery(state)?;
    tokio::task::spawn_blocking(move || call(delivery.as_ref()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_unavailable",
                "shutting down",
            )
        })?
        .map_err(refused)
}

/// `GET /v1/endpoints`: the endpoints, their secrets withheld.
#[utoipa::path(get, path = "/v1/endpoints", tag = "notifications",
    description = "The endpoints notifications are delivered to, their secrets withheld, with each one's cursor (the last notification it is done with).",
    responses(
        (status = 200, description = "`{endpoints: [{id, url, secret: \"[withheld]\", types, created_at, disabled, delivered_through}]}`"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 409, description = "`delivery_unavailable`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: shutting down", body = ErrorBody),
    ))]
pub(crate) async fn list_endpoints(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let endpoints = blocking(&state, |delivery| {
        let mut shown = Vec::new();
        for endpoint in delivery.endpoints()? {
            let cursor = delivery.cursor(&endpoint.id)?;
            let mut value = serde_json::to_value(endpoint.redacted()).expect("serializes");
            value["delivered_through"] = cursor.map(|id| id.to_string()).into();
            shown.push(value);
        }
        Ok(shown)
    })
    .await?;
    Ok(Json(serde_json::json!({ "endpoints": endpoints })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    secret: Option<String>,
    types: Option<Vec<String>>,
}

fn kinds(types: Option<Vec<String>>) -> Result<Option<Vec<NotificationKind>>, ApiError> {
    types
        .map(|names| {
            names
                .iter()
                .map(|name| {
                    NotificationKind::from_name(name).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_endpoint",
                            format!("types: `{name}` is not a notification type"),
                        )
                    })
                })
                .collect()
        })
        .transpose()
}

/// `POST /v1/endpoints`: adds an endpoint; answers it with its secret (shown this once).
#[utoipa::path(post, path = "/v1/endpoints", tag = "notifications",
    description = "Adds an endpoint: `{\"url\", \"secret\"?, \"types\"?}` (the secret is made when not given; types are notification types such as `session.succeeded`). It gets what happens from the log's head on. Needs the API token to be configured.",
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 201, description = "The endpoint, with its secret"),
        (status = 400, description = "`invalid_json`, `invalid_endpoint`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`token_required`", body = ErrorBody),
        (status = 409, description = "`delivery_unavailable`, `too_many_endpoints`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: shutting down", body = ErrorBody),
    ))]
pub(crate) async fn add_endpoint(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<linkflow::delivery::Endpoint>), ApiError> {
    token_required(&state)?;
    let request: NewEndpoint = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))?;
    crate::deliver::parse_endpoint_url(&request.url).map_err(refused)?;
    let types = kinds(request.types)?;
    // It starts at the head: what is stored from now on.
    let head = NotificationId {
        position: state.engine.visible(),
        index: u8::MAX,
    };
    let endpoint = blocking(&state, move |delivery| {
        let endpoint =
            delivery.add_endpoint(&request.url, request.secret, types, chrono::Utc::now())?;
        delivery.set_cursor(&endpoint.id, head)?;
        Ok(endpoint)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(endpoint)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointChange {
    enabled: bool,
}

/// `PATCH /v1/endpoints/{id}`: `{"enabled": true|false}`.
#[utoipa::path(patch, path = "/v1/endpoints/{id}", tag = "notifications",
    description = "Switches an endpoint on (`{\"enabled\": true}`: delivery resumes where it stopped, after a 410 too) or off. Needs the API token to be configured.",
    params(("id" = String, Path, description = "The endpoint's id")),
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 200, description = "`{endpoint, enabled}`"),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 403, description = "`token_required`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`delivery_unavailable`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: shutting down", body = ErrorBody),
    ))]
pub(crate) async fn change_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    token_required(&state)?;
    let change: EndpointChange = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))?;
    let disabled = (!change.enabled).then(|| Disabled {
        at: chrono::Utc::now(),
        reason: "disabled over HTTP".into(),
    });
    let target = id.clone();
    blocking(&state, move |delivery| {
        delivery.set_disabled(&target, disabled)
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "endpoint": id, "enabled": change.enabled }),
    ))
}

/// `DELETE /v1/endpoints/{id}`.
#[utoipa::path(delete, path = "/v1/endpoints/{id}", tag = "notifications",
    description = "Removes an endpoint and its cursor. Needs the API token to be configured.",
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "`{removed}`"),
        (status = 403, description = "`token_required`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`delivery_unavailable`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: shutting down", body = ErrorBody),
    ))]
pub(crate) async fn remove_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    token_required(&state)?;
    let target = id.clone();
    if !blocking(&state, move |delivery| delivery.remove_endpoint(&target)).await? {
        return Err(ApiError::not_found(format!("no endpoint {id}")));
    }
    Ok(Json(serde_json::json!({ "removed": id })))
}

/// `GET /v1/deliveries`' query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveriesQuery {
    /// Only this endpoint's attempts.
    endpoint: Option<String>,
    /// At most this many, the newest (1 to 1000; 100 by default).
    limit: Option<usize>,
}

/// `GET /v1/deliveries`: the latest attempts, newest last.
#[utoipa::path(get, path = "/v1/deliveries", tag = "notifications",
    description = "The latest delivery attempts (newest last): each with its endpoint, notification id, type, stream, attempt number, status or error, and outcome (`delivered`, `retrying` with `next_at`, `gave_up`, `endpoint_disabled`).",
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "`{attempts}`"),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such endpoint", body = ErrorBody),
        (status = 409, description = "`delivery_unavailable`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: shutting down", body = ErrorBody),
    ))]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_ATTEMPTS_SHOWN).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: {limit}; 1 to {MAX_ATTEMPTS_SHOWN}"),
        ));
    }
    let endpoint = query.endpoint;
    let attempts = blocking(&state, move |delivery| {
        if let Some(id) = &endpoint {
            if !delivery.endpoints()?.iter().any(|e| &e.id == id) {
                return Err(DeliveryStateError::UnknownEndpoint(id.clone()));
            }
        }
        delivery.attempts(endpoint.as_deref(), limit)
    })
    .await?;
    Ok(Json(serde_json::json!({ "attempts": attempts })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redelivery {
    endpoint: String,
    notification: String,
}

/// `POST /v1/deliveries/redeliver`: `{"endpoint", "notification"}`.
#[utoipa::path(post, path = "/v1/deliveries/redeliver", tag = "notifications",
    description = "Asks for a notification (`ntf_<position>_<index>`) to be sent to an endpoint again: after it was given up, or to replay it. The sender takes it within a second.",
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 202, description = "`{endpoint, notification}`"),
        (status = 400, description = "`invalid_json`, `invalid_notification`", body = ErrorBody),
        (status = 403, description = "`token_required`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such endpoint or notification", body = ErrorBody),
        (status = 409, description = "`delivery_unavailable`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: shutting down", body = ErrorBody),
    ))]
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    token_required(&state)?;
    let request: Redelivery = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))?;
    let id = NotificationId::parse(&request.notification).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_notification",
            format!(
                "`{}` is not a notification id (ntf_<position>_<index>)",
                request.notification
            ),
        )
    })?;
    if state.engine.notification(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no notification {id}")));
    }
    let endpoint = request.endpoint.clone();
    blocking(&state, move |delivery| {
        delivery.request_redelivery(&endpoint, id)
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "endpoint": request.endpoint, "notification": id.to_string() })),
    ))
}
