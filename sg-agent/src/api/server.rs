//! The HTTP side: `POST /` (and `GET /?Action=…`) on the configured
//! address; bounded bodies and parameter counts; every request signed,
//! authorised, decoded, answered and (as configured) audited.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use super::{
    Call, Snapshot,
    access::{Credentials, is_read},
    actions::{self, Answer, Handler},
    audit::{self, Draft},
    codec,
    error::{ApiError, ApiResult},
    read_only, sigv4,
    views::Scope,
};
use crate::store::Store;

/// Request bodies above this are refused before they are read whole.
pub const MAX_BODY: usize = 2 << 20;

#[derive(Clone)]
pub struct ApiOptions {
    pub listen: SocketAddr,
    pub credentials: Credentials,
    /// Record reads in the audit trail too (they are not by default).
    pub audit_reads: bool,
    /// Serve HTTPS: the certificate and key, loaded.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ApiOptions {
    /// The options, refusing what cannot be served safely before anything
    /// starts: beyond loopback only with TLS (`tls`: the certificate chain
    /// and key, PEM files), and a certificate and key that go together.
    pub fn new(
        listen: SocketAddr,
        credentials: Credentials,
        audit_reads: bool,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Result<ApiOptions> {
        if !listen.ip().is_loopback() && tls.is_none() {
            bail!(
                "--api {listen}: beyond loopback the API needs TLS (--api-tls-cert and --api-tls-key): signed requests and the state would cross the network in clear"
            );
        }
        let tls = tls
            .map(|(cert, key)| tls_acceptor(&cert, &key))
            .transpose()?;
        Ok(ApiOptions {
            listen,
            credentials,
            audit_reads,
            tls,
        })
    }
}

/// The TLS side: the certificate chain and key, checked at start.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the API certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the API key {}", key.display()))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the API certificate and key do not go together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS: each connection's handshake (bounded in time),
/// then HTTP/1.1 with the peer's address where the handler looks for it.
fn serve_tls(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, app: Router) {
    use tower::ServiceExt;
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("the API's accept: {e}");
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return log::debug!("TLS handshake with {peer}: {e}"),
                    Err(_) => return log::debug!("TLS handshake with {peer}: timed out"),
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        app.clone().oneshot(req)
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                if let Err(e) = conn {
                    log::debug!("API connection from {peer}: {e}");
                }
            });
        }
    });
}

struct Server {
    opts: ApiOptions,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    calls: mpsc::Sender<Call>,
    audit: Mutex<Store>,
}

/// Binds `opts.listen` (failing now, not later) and serves until the
/// process ends. Listening beyond loopback needs TLS (docs/api.md).
pub async fn serve(
    opts: ApiOptions,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    calls: mpsc::Sender<Call>,
    audit: Store,
) -> Result<SocketAddr> {
    let acceptor = opts.tls.clone();
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding the API to {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Server {
        opts,
        snapshot,
        calls,
        audit: Mutex::new(audit),
    });
    let app = Router::new()
        .route("/", axum::routing::any(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    if let Some(acceptor) = acceptor {
        serve_tls(listener, acceptor, app);
        log::info!("EC2 API listening on https://{addr}/");
        return Ok(addr);
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            log::error!("the API stopped: {e}");
        }
    });
    log::info!("EC2 API listening on http://{addr}/");
    Ok(addr)
}

fn params_of(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> ApiResult<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form {
        out.extend(form_urlencoded::parse(body).into_owned());
    }
    if out.len() > codec::MAX_PARAMS {
        return Err(ApiError::invalid(format!(
            "{} parameters: at most {} per request",
            out.len(),
            codec::MAX_PARAMS
        )));
    }
    Ok(out)
}

fn reply(status: u16, body: String) -> Response {
    if status >= 400 {
        crate::metrics::api_error(status);
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

async fn handle(
    State(api): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let e = ApiError::new(
                e.status().as_u16(),
                "RequestEntityTooLarge",
                format!("the request body was refused ({e}): at most {MAX_BODY} bytes"),
            );
            return reply(e.status, codec::error_xml(&e, &request_id));
        }
    };
    let params = match params_of(&uri, &headers, &body) {
        Ok(p) => p,
        Err(e) => return reply(e.status, codec::error_xml(&e, &request_id)),
    };
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut draft = Draft {
        time: audit::now(),
        name: action.clone(),
        source: "ec2.amazonaws.com".into(),
        region: api.opts.credentials.region.clone(),
        source_ip: peer.ip().to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(512)
            .collect(),
        access_key: sigv4::claimed_key(&headers),
        user_arn: None,
        request_id: request_id.clone(),
        parameters: Value::Null,
        read_only: is_read(&action),
    };
    let signed = sigv4::Signed {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &headers,
        body: &body,
    };
    let creds = &api.opts.credentials;
    let cred = match sigv4::verify(
        &signed,
        |k| creds.key(k).map(|k| k.secret_access_key.clone()),
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(c) => c,
        Err(e) => return api.refuse(draft, e).await,
    };
    let key = creds.key(&cred.access_key).expect("verified keys exist");
    draft.user_arn = Some(key.arn(&creds.account_id));
    draft.region = cred.region.clone();
    let scope = Scope {
        account: creds.account_id.clone(),
        region: if cred.region.is_empty() {
            creds.region.clone()
        } else {
            cred.region.clone()
        },
    };
    if cred.service == "sts" {
        draft.source = "sts.amazonaws.com".into();
        return sts(
            &action,
            key.arn(&creds.account_id),
            &cred.access_key,
            &scope,
            &request_id,
        );
    }
    if cred.service != "ec2" {
        let e = ApiError::new(
            403,
            "SignatureDoesNotMatch",
            format!(
                "the credential's service is {:?}: this endpoint serves ec2 and sts",
                cred.service
            ),
        );
        return api.refuse(draft, e).await;
    }
    let version = params
        .iter()
        .find(|(k, _)| k == "Version")
        .map(|(_, v)| v.as_str());
    let handler = actions::handler(&action);
    let Some(handler) = handler.filter(|_| codec::served(&action)) else {
        let e = if action.is_empty() {
            ApiError::missing("Action")
        } else {
            ApiError::client(
                "InvalidAction",
                format!("The action {action} is not valid for this web service."),
            )
        };
        return api.refuse(draft, e).await;
    };
    if version != Some(codec::VERSION) {
        let e = ApiError::client(
            "NoSuchVersion",
            format!(
                "An invalid or unsupported Version {version:?} was given: this endpoint serves {}",
                codec::VERSION
            ),
        );
        return api.refuse(draft, e).await;
    }
    if !key.allows("ec2", &action) {
        let e = ApiError::new(
            403,
            "UnauthorizedOperation",
            format!(
                "You are not authorized to perform this operation ({} may not call ec2:{action}).",
                key.user
            ),
        );
        return api.refuse(draft, e).await;
    }
    let decoded = match codec::decode(&action, &params) {
        Ok(v) => v,
        Err(e) => return api.refuse(draft, e).await,
    };
    draft.parameters = decoded.clone();
    let dry_run = decoded.get("DryRun").and_then(Value::as_bool) == Some(true);
    let result = match handler {
        Handler::Read(f) => {
            let snap = api.snapshot.borrow().clone();
            let r = if dry_run {
                Err(dry_run_ok())
            } else {
                f.answer(&snap, &decoded, &scope)
            };
            if api.opts.audit_reads || r.as_ref().is_err_and(|e| e.code != "DryRunOperation") {
                let summary = r.as_ref().map(Answer::summary).map_err(Clone::clone);
                api.record(draft.finish(summary.as_ref(), vec![])).await;
            }
            r
        }
        Handler::Write(f) => {
            if !api.snapshot.borrow().managed {
                let e = read_only(&api.snapshot.borrow().source);
                return api.refuse(draft, e).await;
            }
            let (tx, rx) = oneshot::channel();
            let call = Call {
                action: action.clone(),
                scope: scope.clone(),
                dry_run,
                change: Box::new(move |txn| f(txn, &decoded)),
                record: draft,
                reply: tx,
            };
            let r = if api.calls.send(call).await.is_err() {
                Err(ApiError::new(503, "Unavailable", "the agent is stopping"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Err(ApiError::new(503, "Unavailable", "the agent is stopping"))
                })
            };
            r.map(Answer::Value)
        }
    };
    match result.and_then(|a| a.encode(&action, &request_id)) {
        Ok(xml) => reply(200, xml),
        Err(e) => reply(e.status, codec::error_xml(&e, &request_id)),
    }
}

/// `DryRun=true` on a call that would have succeeded.
pub fn dry_run_ok() -> ApiError {
    ApiError::new(
        412,
        "DryRunOperation",
        "Request would have succeeded, but DryRun flag is set.",
    )
}

impl Server {
    async fn record(&self, event: crate::store::Event) {
        let mut store = self.audit.lock().await;
        // A short write to a local database: the trail is worth the wait.
        let r = tokio::task::block_in_place(|| store.append(&[event]));
        if let Err(e) = r {
            log::error!("writing the audit trail: {e:#}");
        }
    }

    async fn refuse(&self, draft: Draft, e: ApiError) -> Response {
        log::warn!(
            "API {} from {} (key {}): {e}",
            if draft.name.is_empty() {
                "request"
            } else {
                &draft.name
            },
            draft.source_ip,
            draft.access_key.as_deref().unwrap_or("none")
        );
        self.record(draft.finish(Err(&e), vec![])).await;
        reply(e.status, codec::error_xml(&e, &draft.request_id))
    }
}

/// STS `GetCallerIdentity`: the account and the key's user, so that clients
/// (Terraform) learn the account the groups belong to.
fn sts(action: &str, arn: String, key: &str, scope: &Scope, request_id: &str) -> Response {
    let ns = "https://sts.amazonaws.com/doc/2011-06-15/";
    if action != "GetCallerIdentity" {
        let body = format!(
            "<ErrorResponse xmlns=\"{ns}\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>sg serves only GetCallerIdentity of STS</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        );
        return reply(400, body);
    }
    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    reply(
        200,
        format!(
            "<GetCallerIdentityResponse xmlns=\"{ns}\"><GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
            esc(&arn),
            esc(key),
            esc(&scope.account)
        ),
    )
}
