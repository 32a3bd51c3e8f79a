//! `CallSession`: one Durable Object per phone call (named by the call id).
//!
//! It owns the call from the moment it is placed until its outcome is recorded:
//! - the plan (`POST /init`): everything the call needs, so the call itself reads no database;
//! - Twilio's status and answering-machine callbacks, forwarded by the Worker after it checked
//!   their signatures (`POST /status`, `POST /amd`), and hang-up requests (`POST /hangup`);
//! - the media stream (`GET /media`, a WebSocket accepted by the running object), the STT and
//!   TTS sockets and the LLM requests, all driven by the pure engine (`callmeback-media`) in
//!   [`runtime`];
//! - its alarm: limit checks at least every 30 s while the call is live, the backstop for a call
//!   Twilio never reports on, and finalisation retries until the outcome is recorded.
//!
//! This file is the thin wrapper: routing of the internal protocol and persistence. The logic
//! lives in [`runtime::Call`] (glue) and the engine (rules).

mod finalize;
mod links;
pub mod runtime;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use callmeback_domain::calls::{AnsweredBy, CallStatus};
use callmeback_media::CallPlan;
use serde::{Deserialize, Serialize};
use worker::{
    DurableObject, Env, Method, ObjectNamespace, Request, RequestInit, Response, Result, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair, durable_object,
};

use self::runtime::Call;
use crate::outbound::now_ms;

/// Binding of the `CallSession` namespace.
pub const BINDING: &str = "CALL_SESSION";

/// Storage keys.
pub(crate) const PLAN_KEY: &str = "plan";
pub(crate) const CALL_SID_KEY: &str = "call_sid";
pub(crate) const PENDING_KEY: &str = "finalization";
pub(crate) const FINALIZED_KEY: &str = "finalized";

/// Without any news from Twilio this long after placing, the call is recorded as failed.
const SILENT_CALL_BACKSTOP_MS: u64 = 10 * 60 * 1000;

/// The Worker's requests to a call object.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitRequest {
    pub plan: CallPlan,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PlacedRequest {
    pub call_sid: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusRequest {
    pub status: CallStatus,
    pub duration_secs: Option<u32>,
    pub call_sid: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AmdRequest {
    pub answered_by: AnsweredBy,
    pub raw: String,
}

// State and Env hold JS handles without Debug; the macro's glue needs none.
#[allow(missing_debug_implementations)]
#[durable_object]
pub struct CallSession {
    state: Rc<State>,
    env: Env,
    /// The running call, built from the stored plan on first use.
    call: RefCell<Option<Rc<Call>>>,
}

impl DurableObject for CallSession {
    fn new(state: State, env: Env) -> Self {
        Self {
            state: Rc::new(state),
            env,
            call: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        match (req.method(), path.as_str()) {
            (Method::Post, "/init") => {
                let InitRequest { plan } = req.json().await?;
                self.init(plan).await
            }
            (Method::Post, "/placed") => {
                let PlacedRequest { call_sid } = req.json().await?;
                self.state.storage().put(CALL_SID_KEY, &call_sid).await?;
                if let Some(call) = self.call().await? {
                    call.set_call_sid(call_sid);
                }
                Response::ok("ok")
            }
            (Method::Post, "/answered") => match self.call().await? {
                // Twilio fetched the TwiML: the callee picked up. Open STT and TTS now, so they
                // are ready before the media stream starts.
                Some(call) if !call.is_ended() => {
                    call.warm_up();
                    Response::ok("ok")
                }
                // Unknown, over or already recorded: the voice webhook hangs Twilio's leg up
                // instead of streaming into a call nobody is running.
                _ => Response::error("no running call", 404),
            },
            (Method::Post, "/status") => {
                let status: StatusRequest = req.json().await?;
                match self.call().await? {
                    Some(call) => {
                        call.set_call_sid(status.call_sid.clone());
                        call.on_status(status);
                        Response::ok("ok")
                    }
                    None => Response::error("unknown call", 404),
                }
            }
            (Method::Post, "/amd") => {
                let amd: AmdRequest = req.json().await?;
                match self.call().await? {
                    Some(call) => {
                        call.on_amd(amd);
                        Response::ok("ok")
                    }
                    None => Response::error("unknown call", 404),
                }
            }
            (Method::Post, "/hangup") => match self.call().await? {
                Some(call) => {
                    call.hang_up_requested();
                    Response::ok("ok")
                }
                None => Response::error("unknown call", 404),
            },
            (Method::Get, "/media") => self.accept_media(),
            _ => Response::error("not found", 404),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(call) = self.call.borrow().clone() else {
            // The object restarted mid-stream: the call's state is gone with it.
            let _ = ws.close(Some(1011), Some("call state lost"));
            return Ok(());
        };
        match message {
            WebSocketIncomingMessage::String(text) => call.on_twilio_text(&ws, &text),
            WebSocketIncomingMessage::Binary(_) => call.count_dropped("binary_frame"),
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        if let Some(call) = self.call.borrow().clone() {
            call.on_twilio_closed(&ws);
        }
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        if let Some(call) = self.call.borrow().clone() {
            call.on_twilio_closed(&ws);
        }
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        let storage = self.state.storage();
        // 1. An outcome waiting to be recorded: try again.
        if storage
            .get::<serde_json::Value>(PENDING_KEY)
            .await?
            .is_some()
        {
            finalize::retry_pending(self.state.clone(), self.env.clone()).await;
            return Response::ok("retried");
        }
        if storage.get::<bool>(FINALIZED_KEY).await?.unwrap_or(false) {
            return Response::ok("done");
        }
        let Some(call) = self.call().await? else {
            return Response::ok("no call");
        };
        // 2. A live call: the periodic tick (limits, silence) and a batch of cost events.
        if call.is_live() {
            call.periodic().await;
            storage.set_alarm(Duration::from_secs(30)).await?;
            return Response::ok("tick");
        }
        // 3. A call that never went live and that Twilio never reported on.
        if call.is_ended() {
            return Response::ok("ended");
        }
        if now_ms() >= call.placed_at() + SILENT_CALL_BACKSTOP_MS {
            call.give_up("no status from the telephony provider");
        } else {
            storage.set_alarm(Duration::from_secs(60)).await?;
        }
        Response::ok("waiting")
    }
}

impl CallSession {
    async fn init(&self, plan: CallPlan) -> Result<Response> {
        let storage = self.state.storage();
        if let Some(existing) = storage.get::<CallPlan>(PLAN_KEY).await? {
            // Idempotent: the same plan again is fine, another call's is a bug.
            return if existing.call_id == plan.call_id {
                Response::ok("exists")
            } else {
                Response::error("another call owns this object", 409)
            };
        }
        storage.put(PLAN_KEY, &plan).await?;
        storage.put("placed_at", now_ms()).await?;
        storage.set_alarm(Duration::from_secs(60)).await?;
        let call = Call::new(self.state.clone(), self.env.clone(), plan, now_ms())?;
        self.call.replace(Some(call));
        Response::ok("created")
    }

    /// The running call, rebuilt from storage after a restart; `None` before `/init` or after
    /// the outcome was recorded.
    async fn call(&self) -> Result<Option<Rc<Call>>> {
        if let Some(call) = self.call.borrow().clone() {
            return Ok(Some(call));
        }
        let storage = self.state.storage();
        if storage.get::<bool>(FINALIZED_KEY).await?.unwrap_or(false) {
            return Ok(None);
        }
        let Some(plan) = storage.get::<CallPlan>(PLAN_KEY).await? else {
            return Ok(None);
        };
        let placed_at = storage
            .get::<u64>("placed_at")
            .await?
            .unwrap_or_else(now_ms);
        let call = Call::new(self.state.clone(), self.env.clone(), plan, placed_at)?;
        if let Some(sid) = storage.get::<String>(CALL_SID_KEY).await? {
            call.set_call_sid(sid);
        }
        // Another request may have built it while we awaited storage.
        let mut slot = self.call.borrow_mut();
        Ok(Some(slot.get_or_insert(call).clone()))
    }

    fn accept_media(&self) -> Result<Response> {
        let Some(call) = self.call.borrow().clone() else {
            return Response::error("unknown call", 404);
        };
        if !call.accepts_media() {
            return Response::error("a media stream is already open or the call is over", 409);
        }
        // Accepted directly, not through the hibernation API: during a call the object never
        // hibernates anyway (its STT and TTS sockets keep it in memory), and a hibernatable
        // socket delivers every frame as an event of its own, which costs far more per 20 ms
        // frame than a listener in the running object.
        let pair = WebSocketPair::new()?;
        pair.server.accept()?;
        call.twilio_connected(pair.server.clone());
        let reader = call.clone();
        let socket = pair.server;
        wasm_bindgen_futures::spawn_local(async move { reader.read_twilio(socket).await });
        Response::from_websocket(pair.client)
    }
}

/// The stub of a call's object (`id_from_name(call_id)`).
pub fn stub(namespace: &ObjectNamespace, call_id: &str) -> Result<worker::Stub> {
    namespace.id_from_name(call_id)?.get_stub()
}

/// Sends one internal request to a call's object.
pub async fn send<T: Serialize>(
    namespace: &ObjectNamespace,
    call_id: &str,
    path: &str,
    body: &T,
) -> Result<Response> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(serde_json::to_string(body)?.into()));
    // The host is never resolved: a stub routes by object id; the URL only has to parse.
    let request = Request::new_with_init(&format!("https://call.internal{path}"), &init)?;
    stub(namespace, call_id)?.fetch_with_request(request).await
}
