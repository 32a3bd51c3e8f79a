//! A minimal signed client for db-gateway's `POST /v1/op`.
//!
//! It drives one hyper HTTP/1.1 connection directly rather than through a pooling client, so
//! "one persistent connection per benchmark client" holds by construction and the client adds
//! as little CPU as possible: on a small machine every cycle the load generator spends is taken
//! from the gateway it measures. Signing still happens per request, exactly as the Worker does
//! it, because verifying signatures and nonces is part of what the gateway costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use bytes::Bytes;
use callmeback_gateway_api::ops::bench;
use callmeback_gateway_api::{ErrorBody, OP_PATH, OpCall, OpResult};
use callmeback_signing::{
    CONTENT_DIGEST_HEADER, Key, SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER, sign_request,
};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;

use crate::config::GatewayEndpoint;
use crate::targets::Target;

/// Where the gateway listens and the key to sign with.
pub(crate) struct GatewayTarget {
    addr: SocketAddr,
    authority: String,
    /// `http://` + authority: the gateway reconstructs `@target-uri` as this + the path.
    base_uri: String,
    key: Key,
}

impl std::fmt::Debug for GatewayTarget {
    // `Key`'s own Debug redacts the secret; listing it here keeps that guarantee visible.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTarget")
            .field("addr", &self.addr)
            .field("base_uri", &self.base_uri)
            .field("key", &self.key)
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    id: String,
    secret_b64: String,
}

impl GatewayTarget {
    pub(crate) fn load(endpoint: &GatewayEndpoint) -> anyhow::Result<Self> {
        let path = endpoint.keys_file.display();
        let text = std::fs::read_to_string(&endpoint.keys_file)
            .with_context(|| format!("reading keys file {path}"))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|_| {
            anyhow!("keys file {path} is not {{\"keys\":[{{\"id\",\"secret_b64\"}}]}}")
        })?;
        Ok(Self {
            addr: endpoint.addr,
            base_uri: format!("http://{}", endpoint.authority),
            authority: endpoint.authority.clone(),
            key: pick_key(file, endpoint.key_id.as_deref())?,
        })
    }

    pub(crate) fn key_id(&self) -> &str {
        self.key.id()
    }
}

fn pick_key(file: KeyFile, wanted: Option<&str>) -> anyhow::Result<Key> {
    let entry = match wanted {
        Some(id) => file
            .keys
            .into_iter()
            .find(|entry| entry.id == id)
            .ok_or_else(|| anyhow!("keys file has no key `{id}`"))?,
        None => file
            .keys
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("keys file lists no keys"))?,
    };
    // The secret itself never appears in an error.
    let secret = BASE64
        .decode(entry.secret_b64.trim())
        .map_err(|_| anyhow!("secret of key `{}` is not valid base64", entry.id))?;
    Ok(Key::new(entry.id, secret))
}

/// One keep-alive connection to the gateway.
pub(crate) struct GatewayConnection {
    target: Arc<Target>,
    sender: SendRequest<Full<Bytes>>,
    /// Random per connection, so nonces from concurrent clients and reruns never collide.
    nonce_prefix: String,
    sent: u64,
}

impl GatewayConnection {
    pub(crate) async fn open(target: Arc<Target>) -> anyhow::Result<Self> {
        let gateway = target
            .gateway()
            .ok_or_else(|| anyhow!("invariant: a gateway connection needs a gateway target"))?;
        let stream = tokio::net::TcpStream::connect(gateway.addr)
            .await
            .with_context(|| format!("connecting to the gateway at {}", gateway.addr))?;
        // Requests are small and strictly request/response: Nagle would only add delay.
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake with the gateway")?;
        // The connection task ends when the sender is dropped or the server closes.
        tokio::spawn(async move {
            // A failure surfaces as an error on the next request, where it is counted.
            let _ = connection.await;
        });
        Ok(Self {
            target,
            sender,
            nonce_prefix: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>()),
            sent: 0,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub(crate) async fn balance(&mut self, aid: i32) -> anyhow::Result<i32> {
        let body = serde_json::to_vec(&OpCall::of(&bench::ACCOUNT_BALANCE).param("aid", aid))?;
        let (status, body) = self.post(OP_PATH, body).await?;
        if !status.is_success() {
            let code = serde_json::from_slice::<ErrorBody>(&body)
                .map(|error| error.error.code)
                .unwrap_or_else(|_| "unparseable error body".to_owned());
            bail!("gateway answered {status} ({code})");
        }
        balance_from_result(&body, aid)
    }

    /// Signs `body` for `POST path` (fresh nonce, current time) and sends it; any answer the
    /// gateway gives is `Ok`, with its status.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let gateway = self
            .target
            .gateway()
            .ok_or_else(|| anyhow!("invariant: a gateway connection needs a gateway target"))?;
        self.sent += 1;
        let nonce = format!("{}-{}", self.nonce_prefix, self.sent);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("system clock is before 1970"))?
            .as_secs();
        let signed = sign_request(
            &gateway.key,
            "POST",
            &format!("{}{path}", gateway.base_uri),
            &body,
            i64::try_from(created)?,
            &nonce,
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &gateway.authority)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_DIGEST_HEADER, signed.content_digest)
            .header(SIGNATURE_INPUT_HEADER, signed.signature_input)
            .header(SIGNATURE_HEADER, signed.signature)
            .body(Full::new(Bytes::from(body)))?;

        self.sender.ready().await.context("gateway connection")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Extracts `abalance` from an `OpResult` body; exactly one row must come back.
fn balance_from_result(body: &[u8], aid: i32) -> anyhow::Result<i32> {
    let result: OpResult =
        serde_json::from_slice(body).context("gateway answer is not an OpResult")?;
    let [row] = result.rows.as_slice() else {
        bail!("expected 1 row for aid {aid}, got {}", result.rows.len());
    };
    let balance = row
        .get("abalance")
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("gateway row has no integer `abalance`"))?;
    Ok(i32::try_from(balance)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_balance_of_exactly_one_row() {
        assert_eq!(
            balance_from_result(br#"{"rows":[{"abalance":-42}],"row_count":1}"#, 7)
                .expect("one row"),
            -42
        );
        assert!(balance_from_result(br#"{"rows":[],"row_count":0}"#, 7).is_err());
        assert!(
            balance_from_result(
                br#"{"rows":[{"abalance":1},{"abalance":2}],"row_count":2}"#,
                7
            )
            .is_err()
        );
        assert!(balance_from_result(br#"{"rows":[{"abalance":"1"}],"row_count":1}"#, 7).is_err());
        assert!(balance_from_result(br#"{"error":{"code":"x","message":"y"}}"#, 7).is_err());
    }

    #[test]
    fn picks_the_named_key_or_the_first() {
        let file = || KeyFile {
            keys: vec![
                KeyEntry {
                    id: "a".to_owned(),
                    secret_b64: BASE64.encode([1u8; 32]),
                },
                KeyEntry {
                    id: "b".to_owned(),
                    secret_b64: BASE64.encode([2u8; 32]),
                },
            ],
        };
        assert_eq!(pick_key(file(), None).expect("first").id(), "a");
        assert_eq!(pick_key(file(), Some("b")).expect("named").id(), "b");
        assert!(pick_key(file(), Some("c")).is_err());
        let bad = KeyFile {
            keys: vec![KeyEntry {
                id: "a".to_owned(),
                secret_b64: "not base64!".to_owned(),
            }],
        };
        let error = pick_key(bad, None).expect_err("bad secret");
        assert!(!error.to_string().contains("not base64!"), "{error}");
    }
}
