//! The call's outbound sockets: speech-to-text and text-to-speech.
//!
//! Both are opened when the callee picks up (before the media stream starts), kept for the whole
//! call, and reopened when they drop: the engine is told (`SttLost`/`SttConnected`,
//! `TtsLost`/`TtsConnected`) and decides what that means for the conversation — replaying the
//! caller's unfinished utterance to the new STT socket, retrying a line on the new TTS socket, or
//! ending the call after two failures in a row. Text for TTS that is produced before its socket
//! is open waits in a queue, so the greeting never waits for a handshake it could overlap with.

use std::rc::Rc;
use std::time::Duration;

use callmeback_providers::{deepgram, elevenlabs};
use futures_util::StreamExt as _;
use wasm_bindgen_futures::spawn_local;
use worker::{Delay, WebSocket, WebsocketEvent};

use super::runtime::Call;
use crate::outbound::open_websocket;
use callmeback_media::Event;

/// A provider handshake that takes longer than this has failed.
const CONNECT_TIMEOUT_MS: u64 = 5000;
/// Reconnect attempts in a row before giving up on a provider (the engine ends the call
/// politely after two failures; a third attempt covers a blip during the goodbye).
const MAX_ATTEMPTS: u8 = 3;
/// Replayed caller audio goes out in pieces of this size.
const REPLAY_CHUNK_BYTES: usize = 8000;

/// One outbound socket's state.
#[derive(Debug, Default)]
pub(super) struct Link {
    socket: Option<WebSocket>,
    connecting: bool,
    /// Messages waiting for the socket to open.
    queue: Vec<String>,
    /// Bumped on every connect; a reader of an older socket no longer reports.
    generation: u32,
    /// We closed it (the call is over): no reconnect.
    closing: bool,
    attempts: u8,
}

impl Link {
    pub(super) fn socket(&self) -> Option<&WebSocket> {
        self.socket.as_ref()
    }

    /// Whether a connect should start now.
    fn needs_connect(&self) -> bool {
        self.socket.is_none() && !self.connecting && !self.closing && self.attempts < MAX_ATTEMPTS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Stt,
    Tts,
}

fn link(call: &Call, which: Which) -> &std::cell::RefCell<Link> {
    match which {
        Which::Stt => &call.stt,
        Which::Tts => &call.tts,
    }
}

pub(super) fn ensure_stt(call: &Rc<Call>) {
    ensure(call, Which::Stt);
}

pub(super) fn ensure_tts(call: &Rc<Call>) {
    ensure(call, Which::Tts);
}

fn ensure(call: &Rc<Call>, which: Which) {
    {
        let mut link = link(call, which).borrow_mut();
        if !link.needs_connect() {
            return;
        }
        link.connecting = true;
    }
    let call = call.clone();
    spawn_local(async move { connect(call, which).await });
}

/// Sends a message to TTS, or queues it until the socket is open.
pub(super) fn tts_send(call: &Rc<Call>, message: String) {
    let mut link = call.tts.borrow_mut();
    // A failed send means the socket is gone; its reader reports the loss.
    if let Some(socket) = &link.socket
        && socket.send_with_str(&message).is_ok()
    {
        return;
    }
    if !link.closing {
        link.queue.push(message);
    }
    let connect = link.needs_connect();
    drop(link);
    if connect {
        ensure_tts(call);
    }
}

async fn connect(call: Rc<Call>, which: Which) {
    let voice = &call.voice;
    let opened = match which {
        Which::Stt => {
            let url = deepgram::listen_url(&voice.stt_url, &voice.stt);
            let authorization = deepgram::authorization(&voice.stt_key);
            open_websocket(
                &url,
                &[("authorization", &authorization)],
                CONNECT_TIMEOUT_MS,
            )
            .await
        }
        Which::Tts => {
            let voice_id = call.engine.borrow().plan().voice.voice_id.clone();
            let url = elevenlabs::multi_stream_url(&voice.tts_url, &voice_id, &voice.tts);
            open_websocket(&url, &[("xi-api-key", &voice.tts_key)], CONNECT_TIMEOUT_MS).await
        }
    };
    match opened {
        Ok(socket) => {
            let (generation, queued) = {
                let mut state = link(&call, which).borrow_mut();
                state.connecting = false;
                state.attempts = 0;
                if state.closing {
                    let _ = socket.close(Some(1000), Some("call ended"));
                    return;
                }
                state.generation = state.generation.wrapping_add(1);
                state.socket = Some(socket.clone());
                (state.generation, std::mem::take(&mut state.queue))
            };
            match which {
                Which::Stt => {
                    // What waited in the batch is in the replay too: send it once.
                    call.stt_batch.borrow_mut().clear();
                    call.dispatch(Event::SttConnected);
                    let replay = call.engine.borrow_mut().audio_to_replay();
                    for chunk in replay.chunks(REPLAY_CHUNK_BYTES) {
                        let _ = socket.send_with_bytes(chunk);
                    }
                }
                Which::Tts => {
                    for message in queued {
                        let _ = socket.send_with_str(&message);
                    }
                    call.dispatch(Event::TtsConnected);
                }
            }
            let reader = call.clone();
            spawn_local(async move { read(reader, which, socket, generation).await });
        }
        Err(error) => {
            let retry = {
                let mut state = link(&call, which).borrow_mut();
                state.connecting = false;
                state.attempts += 1;
                state.queue.clear();
                !state.closing
            };
            worker::console_warn!("call {}: {which:?} connect failed: {error}", call.id);
            lost(&call, which, error.to_string());
            if retry {
                retry_later(call, which);
            }
        }
    }
}

async fn read(call: Rc<Call>, which: Which, socket: WebSocket, generation: u32) {
    if let Ok(mut events) = socket.events() {
        while let Some(event) = events.next().await {
            match event {
                Ok(WebsocketEvent::Message(message)) => {
                    let Some(text) = message.text() else {
                        continue; // both providers speak JSON text to us
                    };
                    on_message(&call, which, &text);
                }
                Ok(WebsocketEvent::Close(_)) | Err(_) => break,
            }
        }
    }
    let unexpected = {
        let mut state = link(&call, which).borrow_mut();
        if state.generation != generation {
            false // an older socket; a newer one took over
        } else {
            state.socket = None;
            state.queue.clear();
            !state.closing
        }
    };
    if unexpected && !call.is_ended() {
        worker::console_warn!("call {}: {which:?} socket closed", call.id);
        lost(&call, which, "closed".to_owned());
        retry_later(call, which);
    }
}

fn on_message(call: &Rc<Call>, which: Which, text: &str) {
    match which {
        Which::Stt => match deepgram::parse(text) {
            Ok(deepgram::ServerMessage::Stt(event)) => call.dispatch(Event::Stt(event)),
            Ok(deepgram::ServerMessage::Error { message }) => {
                worker::console_warn!("call {}: STT error: {message}", call.id);
            }
            Ok(deepgram::ServerMessage::Metadata { .. } | deepgram::ServerMessage::Nothing) => {}
            Err(_) => worker::console_warn!("call {}: unreadable STT message", call.id),
        },
        Which::Tts => match elevenlabs::parse(text) {
            Ok(elevenlabs::ServerMessage::Tts(event)) => call.dispatch(Event::Tts(event)),
            Ok(elevenlabs::ServerMessage::Error { message }) => {
                worker::console_warn!("call {}: TTS error: {message}", call.id);
            }
            Ok(elevenlabs::ServerMessage::Nothing) => {}
            Err(_) => worker::console_warn!("call {}: unreadable TTS message", call.id),
        },
    }
}

fn lost(call: &Rc<Call>, which: Which, reason: String) {
    match which {
        Which::Stt => call.dispatch(Event::SttLost { reason }),
        Which::Tts => call.dispatch(Event::TtsLost { reason }),
    }
}

fn retry_later(call: Rc<Call>, which: Which) {
    spawn_local(async move {
        let attempts = link(&call, which).borrow().attempts;
        Delay::from(Duration::from_millis(200 * u64::from(attempts).max(1))).await;
        if !call.is_ended() {
            ensure(&call, which);
        }
    });
}

/// The call is over: say goodbye to both providers and stop reconnecting.
pub(super) fn close_all(call: &Rc<Call>) {
    for which in [Which::Stt, Which::Tts] {
        let socket = {
            let mut state = link(call, which).borrow_mut();
            state.closing = true;
            state.queue.clear();
            state.socket.take()
        };
        if let Some(socket) = socket {
            let farewell = match which {
                Which::Stt => deepgram::CLOSE_STREAM.to_owned(),
                Which::Tts => elevenlabs::close_socket(),
            };
            let _ = socket.send_with_str(&farewell);
            let _ = socket.close(Some(1000), Some("call ended"));
        }
    }
}
