//! The one error type of the API: AWS's code, a message, and the HTTP
//! status AWS answers it with.

use crate::model::Issues;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub status: u16,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.into(),
            message: message.into(),
            status,
        }
    }

    /// A client error (HTTP 400) with AWS's `code`.
    pub fn client(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::client("InvalidParameterValue", message)
    }

    pub fn missing(param: &str) -> ApiError {
        ApiError::client(
            "MissingParameter",
            format!("The request must contain the parameter {param}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A refused state, as AWS answers: the first error's code, every error's
/// message (each names the object and the place).
impl From<Issues> for ApiError {
    fn from(e: Issues) -> ApiError {
        let errors: Vec<_> = e.0.iter().filter(|i| !i.warning).collect();
        let Some(first) = errors.first() else {
            return ApiError::internal("validation failed without an error");
        };
        let message = errors
            .iter()
            .map(|i| {
                // `file` is the request parameter, when the source knows it.
                let at = if i.file.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", i.file)
                };
                if i.object.is_empty() {
                    format!("{at}{}", i.message)
                } else {
                    format!("{at}{}: {}", i.object, i.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::client(first.code, message)
    }
}
