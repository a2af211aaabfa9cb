//! API errors: a status that means what it says and a JSON body
//! `{"ok": false, "error": "...", "error_description": "...", "field": "..."}`
//! naming the field at fault when there is one (`ok` and
//! `error_description` are what Particle's SDK and CLI print).

use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::control::config_log::state::RecordRefused;
use crate::control::config_log::writer::WriteError;
use crate::model::integration::InvalidIntegration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
    /// axum's own refusal of a path it cannot read (not UTF-8 once
    /// decoded): answered as axum answers it, in plain text, as it was
    /// before the api's extractors read paths themselves.
    plain: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
            plain: false,
        }
    }

    /// 400 naming `field`.
    pub fn invalid(field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(StatusCode::BAD_REQUEST, error)
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{} not found", what.into()))
    }

    pub fn forbidden(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, error)
    }

    pub fn conflict(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, error)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError {
            plain: true,
            ..ApiError::new(r.status(), r.body_text())
        }
    }
}

impl From<InvalidIntegration> for ApiError {
    fn from(e: InvalidIntegration) -> ApiError {
        ApiError::invalid(&e.field, e.to_string())
    }
}

impl From<RecordRefused> for ApiError {
    fn from(r: RecordRefused) -> ApiError {
        match &r {
            RecordRefused::Invalid(i) => ApiError::invalid(&i.field, r.to_string()),
            RecordRefused::Conflict(_) => ApiError::conflict(r.to_string()),
            RecordRefused::Key(_) => ApiError::new(StatusCode::BAD_REQUEST, r.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Refused(r) => r.into(),
            WriteError::Kafka(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            WriteError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.plain {
            return (self.status, self.error).into_response();
        }
        let mut body = serde_json::json!({
            "ok": false,
            "error": self.error,
            "error_description": self.error,
        });
        if let Some(f) = &self.field {
            body["field"] = f.as_str().into();
        }
        (self.status, Json(body)).into_response()
    }
}
