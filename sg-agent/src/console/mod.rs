//! The console (docs/observe.md, "The console"): read-only pages served by
//! the agent beside the API, on loopback, behind the API's own access keys
//! (HTTP Basic: the access key id and its secret). Server-rendered HTML,
//! nothing fetched from elsewhere: what the AWS console's security-group and
//! flow-log views show, for sg's state.

mod pages;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::api::{Snapshot, access::Credentials};

/// What the pages read.
struct Console {
    credentials: Credentials,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    pin_dir: PathBuf,
    max_flows: u64,
}

/// Binds `listen` (loopback only: the console has no TLS) and serves
/// until the process ends.
pub async fn serve(
    listen: SocketAddr,
    credentials: Credentials,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    pin_dir: PathBuf,
    max_flows: u64,
) -> Result<SocketAddr> {
    if !listen.ip().is_loopback() {
        bail!(
            "--console {listen}: the console listens on loopback only (it has no TLS); reach it through an SSH tunnel"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the console to {listen}"))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Console {
        credentials,
        snapshot,
        pin_dir,
        max_flows,
    });
    let app = Router::new()
        .route("/", get(overview))
        .route("/groups", get(groups))
        .route("/interfaces", get(interfaces))
        .route("/tiers", get(tiers))
        .route("/flows", get(flows))
        .route("/audit", get(audit))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("the console stopped: {e}");
        }
    });
    log::info!("console on http://{addr}/");
    Ok(addr)
}

/// HTTP Basic with one of the API's access keys; anything else is 401.
async fn authenticate(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let ok = given
        .as_deref()
        .and_then(|g| g.split_once(':'))
        .is_some_and(|(id, secret)| {
            c.credentials.key(id).is_some_and(|k| {
                bool::from(k.secret_access_key.as_bytes().ct_eq(secret.as_bytes()))
            })
        });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"sg console\"")],
            "sign in with an access key id and its secret access key\n",
        )
            .into_response();
    }
    next.run(req).await
}

fn html(m: maud::Markup) -> Html<String> {
    Html(m.into_string())
}

async fn overview(State(c): State<Arc<Console>>) -> Html<String> {
    let snap = c.snapshot.borrow().clone();
    let in_use = crate::datapath::Maps::open(&c.pin_dir)
        .map(|m| m.flows_in_use())
        .ok();
    html(pages::overview(&snap.desired, in_use, c.max_flows))
}

async fn groups(State(c): State<Arc<Console>>) -> Html<String> {
    html(pages::groups(&c.snapshot.borrow().clone().desired))
}

async fn interfaces(State(c): State<Arc<Console>>) -> Html<String> {
    html(pages::interfaces(&c.snapshot.borrow().clone().desired))
}

/// Runs `page` on the blocking pool: Graphviz and the audit take time that
/// grows with the state, and the runtime's two workers serve the API too.
async fn blocking(page: impl FnOnce() -> maud::Markup + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(page).await {
        Ok(m) => html(m).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn tiers(State(c): State<Arc<Console>>) -> Response {
    let d = c.snapshot.borrow().clone();
    blocking(move || pages::tiers(crate::graph::svg(&crate::graph::dot(&d.desired)))).await
}

async fn audit(State(c): State<Arc<Console>>) -> Response {
    let d = c.snapshot.borrow().clone();
    blocking(move || {
        let rails = crate::findings::Guardrails::default();
        pages::audit(&crate::findings::audit(&d.desired, &rails))
    })
    .await
}

/// `/flows?interface=eni-…&action=ACCEPT|REJECT&port=N`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct FlowFilter {
    pub interface: String,
    pub action: String,
    pub port: String,
}

async fn flows(Query(f): Query<FlowFilter>) -> Response {
    let port = match f.port.trim() {
        "" => None,
        p => match p.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("port: {p:?} is not a port number\n"),
                )
                    .into_response();
            }
        },
    };
    let recent: Vec<_> = crate::flowlog::RECENT
        .lock()
        .map(|r| r.iter().rev().cloned().collect())
        .unwrap_or_default();
    html(pages::flows(&recent, &f, port)).into_response()
}
