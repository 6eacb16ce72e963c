//! The API's one error type, and the one place it becomes an HTTP status
//! and a JSON body `{"error": "...", "field": "..." | null}`.

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::event::FieldError;

/// Why a request was not served normally.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; the field is named when known.
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("no route for {path}")]
    NotFound { path: String },
    #[error("method {method} is not allowed on {path} (use {allow})")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: Method,
    },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// A `status` fault answered for the handler.
    #[error("injected fault")]
    Injected { status: u16 },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Injected { status } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let field = match &self {
            ApiError::Invalid(e) => e.field.clone(),
            _ => None,
        };
        let mut response = json_response(
            self.status(),
            &json!({ "error": self.to_string(), "field": field }),
        );
        if let ApiError::MethodNotAllowed { allow, .. } = &self {
            if let Ok(v) = allow.as_str().parse() {
                response.headers_mut().insert(header::ALLOW, v);
            }
        }
        response
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    // Serialising our own plain types cannot fail; fall back to `null` anyway.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
