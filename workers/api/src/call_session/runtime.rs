//! The running call: the engine plus the sockets and requests it drives.
//!
//! Everything arrives here as a callback — a Twilio frame, an STT or TTS message, an LLM chunk,
//! a timer — becomes an engine [`Event`] stamped with the clock, and the engine's [`Action`]s are
//! carried out at once: socket sends are synchronous; requests (LLM, gateway, Twilio REST,
//! live-channel pushes) are spawned. A `RefCell` borrow never spans an `.await`: state is read or
//! changed inside a synchronous block, and async work gets clones.
//!
//! # The per-frame path
//! A Twilio `media` frame is parsed borrowing from the frame text, its payload decoded into a
//! reused buffer, metered by the engine and sent on to STT as a binary frame. Outbound audio is
//! encoded into a reused string. Nothing else happens per frame.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use callmeback_domain::calls::CallStatus;
use callmeback_media::meter::CostEvent;
use callmeback_media::{Action, AudioRoute, CallPlan, Engine, Event, LiveEvent, LlmEvent};
use callmeback_providers::openai::{self, SseData, SseParser};
use callmeback_providers::twilio::media::{self, Inbound};
use futures_util::StreamExt as _;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::{JsFuture, spawn_local};
use worker::web_sys::MessageEvent;
use worker::{AbortController, Delay, Env, Fetch, State, WebSocket};

use super::links::{self, Link};
use super::{AmdRequest, StatusRequest, finalize};
use crate::config::{Config, GatewayConfig, TelephonyConfig, VoiceConfig};
use crate::outbound::{self, now_ms};

/// Log at most this many dropped frames of one kind per call (then every 100th).
const DROP_LOG_LIMIT: u32 = 10;

/// The telephony side of the call.
struct TwilioLeg {
    ws: WebSocket,
    /// Known once `start` arrived (and its token was valid).
    stream_sid: Option<String>,
}

/// One call in progress.
pub struct Call {
    pub(super) id: String,
    pub(super) state: Rc<State>,
    pub(super) env: Env,
    /// The configuration sections a call needs, resolved once when the call is built.
    pub(super) gateway: GatewayConfig,
    pub(super) voice: VoiceConfig,
    pub(super) telephony: TelephonyConfig,
    placed_at: u64,
    call_sid: RefCell<Option<String>>,
    pub(super) engine: RefCell<Engine>,
    twilio: RefCell<Option<TwilioLeg>>,
    pub(super) stt: RefCell<Link>,
    pub(super) tts: RefCell<Link>,
    llm: RefCell<Option<(u32, AbortController)>>,
    timer_target: Cell<Option<u64>>,
    timer_generation: Cell<u32>,
    wake_at: Cell<Option<u64>>,
    /// Reused decode buffer for inbound audio.
    audio: RefCell<Vec<u8>>,
    /// Caller audio waiting to go to STT as one message ([`callmeback_media::EngineConfig::stt_batch_ms`]).
    pub(super) stt_batch: RefCell<Vec<u8>>,
    stt_batch_bytes: usize,
    /// Reused encode buffer for outbound media messages.
    frame: RefCell<String>,
    dropped: RefCell<BTreeMap<&'static str, u32>>,
    answered_by: RefCell<Option<String>>,
    finishing: Cell<bool>,
    /// Cost events drained from the engine and not yet written.
    unwritten_costs: RefCell<Vec<CostEvent>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Call {
    pub fn new(
        state: Rc<State>,
        env: Env,
        plan: CallPlan,
        placed_at: u64,
    ) -> worker::Result<Rc<Call>> {
        let config = Config::get(&env);
        let section_error = |e: crate::config::ConfigError| worker::Error::RustError(e.to_string());
        let gateway = config.gateway.get().map_err(section_error)?.clone();
        let voice = config.voice.get().map_err(section_error)?.clone();
        let telephony = config.telephony.get().map_err(section_error)?.clone();
        let mut plan = plan;
        if let Some(cap) = telephony.max_call_secs {
            // The operator's cap is one more time limit; the tier's stays the Twilio backstop.
            plan.limits.max_duration_secs = plan.limits.max_duration_secs.min(cap);
        }
        let engine = Engine::new(plan, voice.engine.clone());
        Ok(Rc::new(Call {
            id: engine.plan().call_id.clone(),
            state,
            env,
            placed_at,
            call_sid: RefCell::new(None),
            engine: RefCell::new(engine),
            twilio: RefCell::new(None),
            stt: RefCell::new(Link::default()),
            tts: RefCell::new(Link::default()),
            llm: RefCell::new(None),
            timer_target: Cell::new(None),
            timer_generation: Cell::new(0),
            wake_at: Cell::new(None),
            audio: RefCell::new(Vec::with_capacity(320)),
            stt_batch_bytes: usize::try_from(voice.engine.stt_batch_ms * 8).unwrap_or(320),
            stt_batch: RefCell::new(Vec::with_capacity(1600)),
            frame: RefCell::new(String::with_capacity(2048)),
            dropped: RefCell::new(BTreeMap::new()),
            answered_by: RefCell::new(None),
            finishing: Cell::new(false),
            unwritten_costs: RefCell::new(Vec::new()),
            gateway,
            voice,
            telephony,
        }))
    }

    pub fn set_call_sid(&self, sid: String) {
        self.call_sid.replace(Some(sid));
    }

    pub(super) fn call_sid(&self) -> Option<String> {
        self.call_sid.borrow().clone()
    }

    pub fn placed_at(&self) -> u64 {
        self.placed_at
    }

    pub fn is_live(&self) -> bool {
        self.engine.borrow().is_live()
    }

    pub fn is_ended(&self) -> bool {
        self.engine.borrow().is_ended()
    }

    /// A media stream may open: none is open yet and the call is not over.
    pub fn accepts_media(&self) -> bool {
        self.twilio.borrow().is_none() && !self.is_ended()
    }

    pub(super) fn answered_by(&self) -> Option<String> {
        self.answered_by.borrow().clone()
    }

    // -----------------------------------------------------------------------------------------
    // Engine plumbing
    // -----------------------------------------------------------------------------------------

    /// Feeds one event to the engine and carries out what it asks.
    pub(super) fn dispatch(self: &Rc<Self>, event: Event) {
        let now = now_ms();
        let mut actions = Vec::new();
        self.engine.borrow_mut().handle(now, event, &mut actions);
        self.apply(actions);
    }

    fn apply(self: &Rc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::PlayAudio { audio, mark } => self.play(&audio, &mark),
                Action::ClearAudio => self.send_twilio_control(media::clear_message),
                Action::StartLlm { turn, request } => {
                    let call = self.clone();
                    spawn_local(async move { call.run_llm(turn, request).await });
                }
                Action::CancelLlm { turn } => {
                    let running = self.llm.borrow_mut().take_if(|(t, _)| *t == turn);
                    if let Some((_, controller)) = running {
                        controller.abort();
                    }
                }
                Action::TtsOpen { context } => {
                    let voice = self.engine.borrow().plan().voice.settings;
                    links::tts_send(
                        self,
                        callmeback_providers::elevenlabs::init_context(&context, &voice),
                    );
                }
                Action::TtsText { context, text } => {
                    links::tts_send(
                        self,
                        callmeback_providers::elevenlabs::text(&context, &text),
                    );
                }
                Action::TtsFlush { context } => {
                    links::tts_send(self, callmeback_providers::elevenlabs::flush(&context));
                }
                Action::TtsClose { context } => {
                    links::tts_send(
                        self,
                        callmeback_providers::elevenlabs::close_context(&context),
                    );
                }
                Action::Publish(event) => self.publish(&event),
                Action::SetStatus(status) => self.record_status(status, None),
                Action::HangUp => self.hang_up_via_telephony(),
                Action::WakeAt(at) => self.wake_at(at),
                Action::Failure { provider, kind } => {
                    worker::console_warn!(
                        "call {}: {} failure: {kind}",
                        self.id,
                        provider.as_str()
                    );
                }
                Action::Finished => self.finished(),
            }
        }
    }

    /// One timer at a time; a later request never delays an earlier one.
    fn wake_at(self: &Rc<Self>, at: u64) {
        self.wake_at.set(Some(at));
        if self.timer_target.get().is_some_and(|target| target <= at) {
            return;
        }
        let generation = self.timer_generation.get().wrapping_add(1);
        self.timer_generation.set(generation);
        self.timer_target.set(Some(at));
        let call = self.clone();
        spawn_local(async move {
            let delay = at.saturating_sub(now_ms());
            Delay::from(Duration::from_millis(delay)).await;
            call.timer_fired(generation);
        });
    }

    fn timer_fired(self: &Rc<Self>, generation: u32) {
        if self.timer_generation.get() != generation {
            return; // replaced by an earlier timer
        }
        self.timer_target.set(None);
        match self.wake_at.get() {
            Some(at) if at <= now_ms() + 1 => {
                self.wake_at.set(None);
                self.dispatch(Event::Tick);
            }
            Some(at) => self.wake_at(at),
            None => {}
        }
    }

    // -----------------------------------------------------------------------------------------
    // Twilio media
    // -----------------------------------------------------------------------------------------

    pub fn twilio_connected(&self, ws: WebSocket) {
        self.twilio.replace(Some(TwilioLeg {
            ws,
            stream_sid: None,
        }));
    }

    /// Reads the Twilio socket until it closes.
    ///
    /// Each frame is handled inside the socket's `message` listener itself, not through
    /// `WebSocket::events()`: that stream queues every event in a channel and wakes a task through
    /// a microtask, several crossings between JS and wasm per 20 ms frame where one does.
    pub async fn read_twilio(self: Rc<Self>, ws: WebSocket) {
        let socket: &worker::web_sys::WebSocket = ws.as_ref();
        let on_message = {
            let call = self.clone();
            let ws = ws.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                match event.data().as_string() {
                    Some(text) => call.on_twilio_text(&ws, &text),
                    None => call.count_dropped("binary_frame"),
                }
            })
        };
        let mut resolve_closed = None;
        let closed = js_sys::Promise::new(&mut |resolve, _reject| resolve_closed = Some(resolve));
        let on_end = Closure::<dyn FnMut(JsValue)>::new(move |_event: JsValue| {
            if let Some(resolve) = &resolve_closed {
                let _ = resolve.call0(&JsValue::NULL);
            }
        });
        let listening = socket
            .add_event_listener_with_callback("message", on_message.as_ref().unchecked_ref())
            .and_then(|()| {
                socket.add_event_listener_with_callback("close", on_end.as_ref().unchecked_ref())
            })
            .and_then(|()| {
                socket.add_event_listener_with_callback("error", on_end.as_ref().unchecked_ref())
            });
        if listening.is_ok() {
            let _ = JsFuture::from(closed).await;
        }
        // The listeners hold the call: take them off so the call can be dropped with its socket.
        let _ = socket
            .remove_event_listener_with_callback("message", on_message.as_ref().unchecked_ref());
        let _ =
            socket.remove_event_listener_with_callback("close", on_end.as_ref().unchecked_ref());
        let _ =
            socket.remove_event_listener_with_callback("error", on_end.as_ref().unchecked_ref());
        drop((on_message, on_end));
        self.on_twilio_closed(&ws);
    }

    /// One text frame from Twilio.
    pub fn on_twilio_text(self: &Rc<Self>, ws: &WebSocket, text: &str) {
        let mut audio = self.audio.borrow_mut();
        let parsed = match media::parse_inbound(text, &mut audio) {
            Ok(parsed) => parsed,
            Err(error) => {
                drop(audio);
                self.count_dropped(error.code());
                return;
            }
        };
        if let Inbound::Media { stream_sid } = &parsed {
            // The hot path: meter, then forward to STT.
            if let Err(kind) = self.check_stream(stream_sid, "media_before_start") {
                drop(audio);
                self.count_dropped(kind);
                return;
            }
            let route = self.engine.borrow_mut().caller_audio(&audio);
            match route {
                AudioRoute::Forward => {
                    let mut batch = self.stt_batch.borrow_mut();
                    batch.extend_from_slice(&audio);
                    if batch.len() >= self.stt_batch_bytes {
                        if let Some(ws) = self.stt.borrow().socket() {
                            let _ = ws.send_with_bytes(&*batch);
                        }
                        batch.clear();
                    }
                }
                AudioRoute::Buffered => {}
                AudioRoute::Drop => {
                    drop(audio);
                    self.count_dropped("media_after_end");
                }
            }
            return;
        }
        drop(audio);
        match parsed {
            Inbound::Connected => {}
            Inbound::Start(start) => self.on_stream_start(ws, start),
            Inbound::Mark { stream_sid, name } => {
                match self.check_stream(&stream_sid, "event_before_start") {
                    Ok(()) => self.dispatch(Event::Mark {
                        name: name.into_owned(),
                    }),
                    Err(kind) => self.count_dropped(kind),
                }
            }
            Inbound::Dtmf { stream_sid, digit } => {
                match self.check_stream(&stream_sid, "event_before_start") {
                    Ok(()) => self.dispatch(Event::Dtmf { digit }),
                    Err(kind) => self.count_dropped(kind),
                }
            }
            Inbound::Stop { stream_sid } => {
                match self.check_stream(&stream_sid, "event_before_start") {
                    Ok(()) => self.dispatch(Event::StreamStopped),
                    Err(kind) => self.count_dropped(kind),
                }
            }
            Inbound::Media { .. } => unreachable!("handled above"),
        }
    }

    /// Whether a frame naming `stream_sid` belongs to the running stream; otherwise the kind of
    /// drop it is: `before_start` when no stream has started yet, `wrong_stream_sid` else.
    fn check_stream(
        &self,
        stream_sid: &str,
        before_start: &'static str,
    ) -> Result<(), &'static str> {
        match self
            .twilio
            .borrow()
            .as_ref()
            .and_then(|leg| leg.stream_sid.as_deref())
        {
            Some(ours) if ours == stream_sid => Ok(()),
            Some(_) => Err("wrong_stream_sid"),
            None => Err(before_start),
        }
    }

    fn on_stream_start(self: &Rc<Self>, ws: &WebSocket, start: media::StreamStart) {
        if self
            .twilio
            .borrow()
            .as_ref()
            .is_some_and(|leg| leg.stream_sid.is_some())
        {
            self.count_dropped("duplicate_start");
            return;
        }
        let token = start
            .custom_parameters
            .get("token")
            .map(String::as_str)
            .unwrap_or("");
        let verified = callmeback_auth::capability::verify_media_stream_token(
            &self.telephony.stream_secret,
            &self.id,
            token,
            (now_ms() / 1000) as i64,
        );
        if let Err(reason) = verified {
            worker::console_warn!("call {}: media stream refused: token {reason}", self.id);
            self.count_dropped("invalid_stream_token");
            let _ = ws.close(Some(1008), Some("invalid stream token"));
            // The socket is not the call's stream: Twilio's own (retried) stream may still come.
            self.release_unstarted_leg(ws);
            return;
        }
        if let Some(leg) = self.twilio.borrow_mut().as_mut() {
            leg.stream_sid = Some(start.stream_sid.clone());
        }
        self.set_call_sid(start.call_sid);
        self.warm_up();
        self.dispatch(Event::StreamStarted {
            stream_sid: start.stream_sid,
        });
    }

    /// The Twilio socket `ws` closed: the end of the stream if it had started; if it never did,
    /// the call can still take a stream (Twilio reconnects; a refused socket is not the call's).
    pub fn on_twilio_closed(self: &Rc<Self>, ws: &WebSocket) {
        let started = self
            .twilio
            .borrow()
            .as_ref()
            .filter(|leg| &leg.ws == ws)
            .map(|leg| leg.stream_sid.is_some());
        match started {
            Some(true) => self.dispatch(Event::StreamStopped),
            Some(false) => self.release_unstarted_leg(ws),
            None => {} // not (or no longer) the call's socket
        }
    }

    /// Forgets the Twilio socket `ws` if it is the call's and its stream never started.
    fn release_unstarted_leg(&self, ws: &WebSocket) {
        let mut twilio = self.twilio.borrow_mut();
        if twilio
            .as_ref()
            .is_some_and(|leg| &leg.ws == ws && leg.stream_sid.is_none())
        {
            *twilio = None;
        }
    }

    /// Counts and (boundedly) logs a frame that was dropped. Never logs frame content.
    pub fn count_dropped(&self, kind: &'static str) {
        let count = {
            let mut dropped = self.dropped.borrow_mut();
            let count = dropped.entry(kind).or_insert(0);
            *count += 1;
            *count
        };
        if count <= DROP_LOG_LIMIT || count % 100 == 0 {
            worker::console_warn!(
                "call {}: dropped Twilio frame ({kind}), {count} so far",
                self.id
            );
        }
    }

    /// Dropped frames by kind, for the call log.
    pub(super) fn dropped_frames(&self) -> BTreeMap<&'static str, u32> {
        self.dropped.borrow().clone()
    }

    fn play(&self, audio: &[u8], mark: &str) {
        let twilio = self.twilio.borrow();
        let Some((ws, sid)) = twilio
            .as_ref()
            .and_then(|leg| leg.stream_sid.as_deref().map(|sid| (&leg.ws, sid)))
        else {
            return;
        };
        let mut frame = self.frame.borrow_mut();
        frame.clear();
        media::write_media(sid, audio, &mut frame);
        let _ = ws.send_with_str(frame.as_str());
        let _ = ws.send_with_str(media::mark_message(sid, mark));
    }

    fn send_twilio_control(&self, message: fn(&str) -> String) {
        let twilio = self.twilio.borrow();
        if let Some(leg) = twilio.as_ref()
            && let Some(sid) = leg.stream_sid.as_deref()
        {
            let _ = leg.ws.send_with_str(message(sid));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Providers
    // -----------------------------------------------------------------------------------------

    /// Opens STT and TTS if they are not open or opening (idempotent).
    pub fn warm_up(self: &Rc<Self>) {
        links::ensure_stt(self);
        links::ensure_tts(self);
    }

    async fn run_llm(self: Rc<Self>, turn: u32, request: callmeback_media::events::LlmRequest) {
        let voice = &self.voice;
        let controller = AbortController::default();
        let signal = controller.signal();
        self.llm.replace(Some((turn, controller)));
        let body = openai::request_body(&voice.llm, &request, true);
        let authorization = format!("Bearer {}", voice.llm_key);
        let url = format!("{}/chat/completions", voice.llm_url);
        let fail = |call: &Rc<Self>, reason: String| {
            call.dispatch(Event::Llm {
                turn,
                event: LlmEvent::Failed(reason),
            });
        };
        let request = match outbound::post(
            &url,
            &[
                ("authorization", &authorization),
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            body,
        ) {
            Ok(request) => request,
            Err(error) => return fail(&self, error.to_string()),
        };
        let mut response = match Fetch::Request(request).send_with_signal(&signal).await {
            Ok(response) => response,
            Err(error) => return fail(&self, error.to_string()),
        };
        if response.status_code() != 200 {
            return fail(&self, format!("status {}", response.status_code()));
        }
        let mut stream = match response.stream() {
            Ok(stream) => stream,
            Err(error) => return fail(&self, error.to_string()),
        };
        let mut parser = SseParser::default();
        while let Some(chunk) = stream.next().await {
            let bytes = match chunk {
                Ok(bytes) => bytes,
                Err(error) => return fail(&self, error.to_string()),
            };
            for data in parser.feed(&bytes) {
                match data {
                    SseData::Json(json) => {
                        for event in openai::chunk_events(&json) {
                            self.dispatch(Event::Llm { turn, event });
                        }
                    }
                    SseData::Done => {
                        self.llm.borrow_mut().take_if(|(t, _)| *t == turn);
                        self.dispatch(Event::Llm {
                            turn,
                            event: LlmEvent::Finished,
                        });
                        return;
                    }
                }
            }
        }
        self.llm.borrow_mut().take_if(|(t, _)| *t == turn);
        // The stream ended without [DONE]: what arrived is the reply.
        self.dispatch(Event::Llm {
            turn,
            event: LlmEvent::Finished,
        });
    }

    // -----------------------------------------------------------------------------------------
    // Telephony events (forwarded by the Worker's webhook routes)
    // -----------------------------------------------------------------------------------------

    pub fn on_status(self: &Rc<Self>, report: StatusRequest) {
        if report.status.is_final() {
            self.dispatch(Event::TelephonyEnded {
                status: report.status,
                duration_secs: report.duration_secs,
            });
        } else {
            if report.status == CallStatus::Connected {
                self.dispatch(Event::Answered);
            }
            self.record_status(report.status, Some(report.call_sid));
        }
    }

    pub fn on_amd(self: &Rc<Self>, amd: AmdRequest) {
        self.answered_by.replace(Some(amd.raw));
        self.dispatch(Event::AnsweredBy(amd.answered_by));
    }

    pub fn hang_up_requested(self: &Rc<Self>) {
        if self.is_live() {
            self.dispatch(Event::HangUpRequested);
        } else {
            // Not answered yet: cancel the ringing call; its final status callback finishes it.
            self.hang_up_via_telephony();
        }
    }

    /// Records the call as failed when nothing more will ever be heard of it.
    pub fn give_up(self: &Rc<Self>, reason: &str) {
        worker::console_warn!("call {}: giving up: {reason}", self.id);
        self.dispatch(Event::TelephonyEnded {
            status: CallStatus::Failed,
            duration_secs: None,
        });
    }

    fn hang_up_via_telephony(self: &Rc<Self>) {
        let Some(sid) = self.call_sid() else {
            worker::console_warn!(
                "call {}: hang-up requested before Twilio named the call",
                self.id
            );
            return;
        };
        let call = self.clone();
        spawn_local(async move {
            if let Err(error) = crate::telephony::hang_up(&call.telephony, &sid).await {
                worker::console_error!("call {}: hang-up failed: {error:?}", call.id);
            }
        });
    }

    /// The periodic alarm: a tick for the engine and a batch of cost events to the database.
    pub async fn periodic(self: &Rc<Self>) {
        self.dispatch(Event::Tick);
        let events = {
            let mut engine = self.engine.borrow_mut();
            engine.drain_cost_events(now_ms())
        };
        let mut batch = std::mem::take(&mut *self.unwritten_costs.borrow_mut());
        batch.extend(events);
        if batch.is_empty() {
            return;
        }
        if let Err(error) = finalize::write_cost_events(self, &batch).await {
            worker::console_warn!("call {}: cost events not written yet: {error}", self.id);
            // Kept for the next batch or the final transaction (ids make a retry harmless).
            self.unwritten_costs.borrow_mut().extend(batch);
        }
    }

    pub(super) fn take_unwritten_costs(&self) -> Vec<CostEvent> {
        std::mem::take(&mut *self.unwritten_costs.borrow_mut())
    }

    // -----------------------------------------------------------------------------------------
    // Status, live events, the end
    // -----------------------------------------------------------------------------------------

    fn record_status(self: &Rc<Self>, status: CallStatus, call_sid: Option<String>) {
        let call = self.clone();
        spawn_local(async move {
            match finalize::advance_status(&call, status, call_sid.as_deref()).await {
                Ok(true) => call.publish_status(status),
                Ok(false) => {} // already at or past it
                Err(error) => {
                    worker::console_warn!(
                        "call {}: status {status} not recorded: {error}",
                        call.id
                    );
                }
            }
        });
    }

    pub(super) fn publish_status(self: &Rc<Self>, status: CallStatus) {
        let event = serde_json::json!({
            "type": "call_status",
            "call_id": self.id,
            "status": status,
        });
        self.publish_json(event);
    }

    fn publish(self: &Rc<Self>, event: &LiveEvent) {
        match serde_json::to_value(event) {
            Ok(value) => self.publish_json(value),
            Err(error) => {
                worker::console_error!("call {}: live event not encoded: {error}", self.id)
            }
        }
    }

    fn publish_json(self: &Rc<Self>, event: serde_json::Value) {
        let user_id = self.engine.borrow().plan().user_id.clone();
        let env = self.env.clone();
        let call_id = self.id.clone();
        spawn_local(async move {
            if let Err(error) = crate::live::publish(&env, &user_id, &event).await {
                worker::console_warn!("call {call_id}: live event not delivered: {error}");
            }
        });
    }

    fn finished(self: &Rc<Self>) {
        if self.finishing.replace(true) {
            return;
        }
        // Nothing more to hear or say: release the providers and the stream.
        if let Some((_, controller)) = self.llm.borrow_mut().take() {
            controller.abort();
        }
        links::close_all(self);
        if let Some(leg) = self.twilio.borrow().as_ref() {
            let _ = leg.ws.close(Some(1000), Some("call ended"));
        }
        let call = self.clone();
        spawn_local(async move { finalize::run(call).await });
    }
}
