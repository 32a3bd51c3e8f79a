//! Test helpers: the simulators on a free port, and a fake application (the Worker's role) that
//! serves TwiML, receives Twilio's webhooks and plays a persona on the media stream.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callmeback_simulators::codec::{self, SegmentDecoder, SegmentEvent};
use callmeback_simulators::twilio::signature;
use callmeback_simulators::{SimConfig, Simulators};
use serde_json::{Value, json};

pub const ACCOUNT: &str = "AC11111111111111111111111111111111";
pub const TOKEN: &str = "test-token";

pub async fn start_sims() -> Simulators {
    let mut config = SimConfig::default();
    config.twilio.account_sid = ACCOUNT.to_owned();
    config.twilio.auth_token = TOKEN.to_owned();
    config.twilio.ringing_delay_ms = 20;
    config.twilio.amd_decision_ms = 200;
    Simulators::start(config)
        .await
        .expect("simulators start on a free port")
}

/// Fast scenario defaults for tests.
pub fn scenario(json: Value) -> callmeback_simulators::Scenario {
    let mut base = json!({"ring_ms": 50, "max_wait_ms": 4000});
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, json) {
        base.extend(extra);
    }
    serde_json::from_value(base).expect("valid scenario JSON")
}

pub fn basic_auth() -> String {
    format!("Basic {}", STANDARD.encode(format!("{ACCOUNT}:{TOKEN}")))
}

pub fn calls_url(sims: &Simulators) -> String {
    format!(
        "{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
        sims.base_url()
    )
}

pub fn call_url(sims: &Simulators, sid: &str) -> String {
    format!(
        "{}/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json",
        sims.base_url()
    )
}

/// POSTs `Calls.json`; returns (status, body).
pub async fn create_call(sims: &Simulators, params: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(calls_url(sims))
        .header("authorization", basic_auth())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(params).expect("encodable"))
        .send()
        .await
        .expect("simulator answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// How the fake app's persona behaves on the media stream.
#[derive(Debug, Clone)]
pub struct Persona {
    /// Spoken as soon as the stream starts.
    pub greeting: Option<String>,
    /// Reply "You said: <line>." after each caller line.
    pub reply: bool,
    /// Replies longer than the default (for barge-in tests).
    pub reply_text: Option<String>,
    /// Send `clear` as soon as caller speech is recognised while the persona is talking.
    pub clear_on_speech: bool,
    /// A mark after each reply's audio.
    pub marks: bool,
    /// Frames per 20 ms tick: 0 = everything at once.
    pub frames_per_tick: usize,
    /// Send one frame every this many ticks (2 = half real time: playback gaps).
    pub ticks_per_frame: usize,
    /// Send protocol violations right after `start`.
    pub violations: bool,
    /// Close the socket this long after `start`.
    pub close_after_ms: Option<u64>,
    pub ms_per_char: u32,
    /// Keep the stream busy with silence frames whenever there is nothing to say.
    pub silence_when_idle: bool,
}

impl Default for Persona {
    fn default() -> Self {
        Self {
            greeting: Some("Hello, this is Brad calling you back.".to_owned()),
            reply: true,
            reply_text: None,
            clear_on_speech: false,
            marks: true,
            frames_per_tick: 0,
            ticks_per_frame: 1,
            violations: false,
            close_after_ms: None,
            ms_per_char: 20,
            silence_when_idle: false,
        }
    }
}

/// One request the app received from the Twilio simulator.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub url: String,
    pub params: Vec<(String, String)>,
    pub signature: Option<String>,
    pub signature_valid: bool,
}

impl Received {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct AppLog {
    pub requests: Vec<Received>,
    /// Handshake signature header and its validity per stream.
    pub stream_handshakes: Vec<(Option<String>, bool)>,
    /// Every text message the phone sent, parsed.
    pub stream_messages: Vec<Value>,
    /// Caller lines recognised by decoding the inbound audio.
    pub heard_lines: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FakeApp {
    pub base: String,
    pub log: Arc<Mutex<AppLog>>,
    pub twiml: Arc<Mutex<String>>,
    pub twiml_status: Arc<Mutex<u16>>,
    pub persona: Arc<Mutex<Persona>>,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl FakeApp {
    pub fn log(&self) -> std::sync::MutexGuard<'_, AppLog> {
        self.log.lock().expect("test lock")
    }

    pub fn set_twiml(&self, twiml: &str) {
        *self.twiml.lock().expect("test lock") = twiml.to_owned();
    }

    /// TwiML that connects the stream to this app.
    pub fn connect_twiml(&self) -> String {
        let ws = self.base.replacen("http://", "ws://", 1);
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{ws}/media/call-1" statusCallback="{}/stream-status"><Parameter name="callId" value="call-1"/><Parameter name="persona" value="brad"/></Stream></Connect></Response>"#,
            self.base
        )
    }

    pub fn requests_to(&self, path: &str) -> Vec<Received> {
        self.log()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn stream_events(&self, event: &str) -> Vec<Value> {
        self.log()
            .stream_messages
            .iter()
            .filter(|m| m["event"] == event)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct AppState {
    app: FakeApp,
}

pub async fn start_app() -> FakeApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<FakeApp>();
    let server = tokio::spawn(async move {
        let app = rx.await.expect("app handed over");
        let router = Router::new()
            .route("/twiml", post(webhook).get(webhook))
            .route("/status", post(webhook).get(webhook))
            .route("/amd", post(webhook))
            .route("/stream-status", post(webhook))
            .route("/media/{id}", get(media))
            .with_state(AppState { app });
        axum::serve(listener, router).await.expect("serve");
    });
    let app = FakeApp {
        base,
        log: Arc::new(Mutex::new(AppLog::default())),
        twiml: Arc::new(Mutex::new(String::new())),
        twiml_status: Arc::new(Mutex::new(200)),
        persona: Arc::new(Mutex::new(Persona::default())),
        _server: Arc::new(server),
    };
    app.set_twiml(&app.connect_twiml());
    tx.send(app.clone()).expect("server task waits");
    app
}

async fn webhook(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let app = state.app;
    let url = format!(
        "{}{}",
        app.base,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    let params: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap_or_default();
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let signature_valid = sig
        .as_deref()
        .is_some_and(|s| signature::verify(TOKEN, &url, &params, s));
    let path = uri.path().to_owned();
    app.log().requests.push(Received {
        path: path.clone(),
        url,
        params,
        signature: sig,
        signature_valid,
    });
    if path == "/twiml" {
        let status = *app.twiml_status.lock().expect("test lock");
        let twiml = app.twiml.lock().expect("test lock").clone();
        return (
            axum::http::StatusCode::from_u16(status).expect("valid status"),
            [("content-type", "text/xml")],
            twiml,
        )
            .into_response();
    }
    axum::http::StatusCode::NO_CONTENT.into_response()
}

async fn media(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let app = state.app;
    let url = format!("{}/media/{id}", app.base.replacen("http://", "ws://", 1));
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let valid = sig
        .as_deref()
        .is_some_and(|s| signature::verify(TOKEN, &url, &[], s));
    app.log().stream_handshakes.push((sig, valid));
    upgrade.on_upgrade(move |socket| persona_loop(app, socket))
}

fn media_messages(stream_sid: &str, audio: &[u8]) -> Vec<String> {
    audio
        .chunks(160)
        .map(|c| json!({"event": "media", "streamSid": stream_sid, "media": {"payload": STANDARD.encode(c)}}).to_string())
        .collect()
}

async fn persona_loop(app: FakeApp, mut socket: WebSocket) {
    let persona = app.persona.lock().expect("test lock").clone();
    let mut stream_sid = String::new();
    let mut outgoing: VecDeque<String> = VecDeque::new();
    let mut decoder = SegmentDecoder::new();
    let mut events = Vec::new();
    let mut replies = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut tick_count = 0usize;
    let close_at = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(close_at);
    let queue_reply = |text: &str, outgoing: &mut VecDeque<String>, stream_sid: &str, n: usize| {
        let id = codec::next_segment_id();
        let mut audio =
            codec::encode_segment(id, text, codec::duration_for(text, persona.ms_per_char));
        audio.extend([codec::SILENCE; 960]);
        outgoing.extend(media_messages(stream_sid, &audio));
        if persona.marks {
            outgoing.push_back(json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": format!("reply-{n}")}}).to_string());
        }
    };
    loop {
        tokio::select! {
            message = socket.recv() => {
                let Some(Ok(message)) = message else { break };
                let Message::Text(text) = message else { continue };
                let value: Value = serde_json::from_str(text.as_str()).expect("phone sends JSON");
                app.log().stream_messages.push(value.clone());
                match value["event"].as_str() {
                    Some("start") => {
                        stream_sid = value["streamSid"].as_str().expect("streamSid").to_owned();
                        if persona.violations {
                            let _ = socket.send(Message::Binary(vec![1, 2, 3].into())).await;
                            for bad in [
                                json!({"event": "dance", "streamSid": stream_sid}),
                                json!({"event": "media", "streamSid": "MZwrong", "media": {"payload": ""}}),
                                json!({"event": "media", "streamSid": stream_sid, "media": {"payload": "%%%"}}),
                                json!({"event": "clear", "streamSid": stream_sid, "extra": 1}),
                                json!({"event": "mark", "streamSid": stream_sid}),
                            ] {
                                let _ = socket.send(Message::Text(bad.to_string().into())).await;
                            }
                        }
                        if let Some(greeting) = &persona.greeting {
                            queue_reply(greeting, &mut outgoing, &stream_sid, replies);
                            replies += 1;
                        }
                        if let Some(ms) = persona.close_after_ms {
                            close_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(ms));
                        }
                    }
                    Some("media") => {
                        let payload = STANDARD.decode(value["media"]["payload"].as_str().expect("payload")).expect("base64");
                        events.clear();
                        decoder.feed(&payload, &mut events);
                        for event in events.drain(..) {
                            match event {
                                SegmentEvent::Started { info, .. } => {
                                    if persona.clear_on_speech && !outgoing.is_empty() {
                                        outgoing.clear();
                                    }
                                    if persona.clear_on_speech {
                                        let clear = json!({"event": "clear", "streamSid": stream_sid});
                                        let _ = socket.send(Message::Text(clear.to_string().into())).await;
                                    }
                                    app.log().heard_lines.push(info.text.clone());
                                }
                                SegmentEvent::Ended { id: Some(_), .. } if persona.reply => {
                                    let heard = app.log().heard_lines.last().cloned().unwrap_or_default();
                                    let text = persona.reply_text.clone().unwrap_or_else(|| format!("You said: {heard}"));
                                    queue_reply(&text, &mut outgoing, &stream_sid, replies);
                                    replies += 1;
                                }
                                _ => {}
                            }
                        }
                    }
                    Some("stop") => break,
                    _ => {}
                }
            }
            _ = tick.tick() => {
                tick_count += 1;
                if !tick_count.is_multiple_of(persona.ticks_per_frame.max(1)) {
                    continue;
                }
                if persona.silence_when_idle && outgoing.is_empty() && !stream_sid.is_empty() {
                    outgoing.extend(media_messages(&stream_sid, &[codec::SILENCE; 160]));
                }
                let n = if persona.frames_per_tick == 0 { outgoing.len() } else { persona.frames_per_tick };
                for _ in 0..n {
                    let Some(message) = outgoing.pop_front() else { break };
                    if socket.send(Message::Text(message.into())).await.is_err() {
                        return;
                    }
                }
            }
            () = &mut close_at => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
        }
    }
}
