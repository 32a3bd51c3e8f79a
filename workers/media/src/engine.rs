//! The conversation engine: one per call, events in, actions out.
//!
//! # The loop
//! ```text
//! caller audio ──▶ STT ──▶ transcript ──(turn ends)──▶ LLM ──▶ sentences ──▶ TTS ──▶ audio ──▶ caller
//!                      ▲                                                                     │
//!                      └──────────── barge-in: clear, cancel LLM + TTS, cut the line ◀───────┘
//! ```
//! - The persona greets first when the media stream starts.
//! - The caller's turn ends on the STT provider's own endpointing (`speech_final`) or its
//!   utterance-end signal, whichever comes first — no local silence timer adds latency.
//! - The reply streams: each sentence goes to TTS as soon as the LLM finishes it, and the first
//!   audio frame goes to the caller as soon as it exists ([`crate::playout`]).
//! - Speech over the persona interrupts it only when it has words ([`EngineConfig::barge_in_min_words`]
//!   words that are not backchannels such as "mhm"): echo and listening noises do not.
//! - Limits ([`crate::limits`]) are checked at every turn and on every tick; the engine asks for
//!   ticks precisely when a time limit is due and at least every
//!   [`EngineConfig::limit_check_interval_ms`].
//! - Provider failures are survived where possible (STT audio is replayed after a reconnect; an
//!   LLM failure gets a spoken fallback line; TTS is retried once) and two failures in a row of
//!   one provider end the call politely, with the reason recorded.
//!
//! # The hot path
//! Caller audio (50 frames a second) does not go through [`Engine::handle`]: the glue calls
//! [`Engine::caller_audio`], which meters the frame, keeps it for a possible STT replay and says
//! whether to forward it. Nothing on that path allocates once the replay buffer has grown.

use std::collections::VecDeque;

use callmeback_domain::calls::{AnsweredBy, CallStatus, VoicemailAction};
use serde::{Deserialize, Serialize};

use crate::config::{BYTES_PER_MS, EngineConfig};
use crate::events::{
    Action, Event, LiveEvent, LlmEvent, LlmRequest, Millis, Provider, SttEvent, TtsEvent,
};
use crate::limits::{LimitWatch, Verdict};
use crate::meter::Meter;
use crate::outcome::{CallOutcome, EndReason, FailureRecord};
use crate::plan::CallPlan;
use crate::playout::Playout;
use crate::sentences::SentenceSplitter;
use crate::transcript::{Line, Role, Transcript, heard_prefix};

/// Words that show listening, not a wish to speak; they never interrupt the persona.
const BACKCHANNELS: &[&str] = &[
    "mhm", "mm", "mmm", "hm", "hmm", "uh", "um", "uh-huh", "uhhuh", "yeah", "yep", "yes", "ok",
    "okay", "right", "sure", "aha", "ah", "oh", "huh", "yup", "cool", "alright",
];

/// After the last audio of a flushed utterance, how long to wait for the provider's "finished"
/// before treating the utterance as complete anyway.
const TTS_SETTLE_MS: u64 = 1000;
/// After asking the telephony side to hang up, how long to wait for it to confirm before the
/// call is recorded as over anyway.
const HANGUP_CONFIRM_MS: u64 = 10_000;

/// What the glue does with one frame of caller audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioRoute {
    /// Send it to the STT connection now.
    Forward,
    /// Keep it: STT is not connected; it will be replayed ([`Engine::audio_to_replay`]).
    Buffered,
    /// Ignore it (no conversation running).
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// Waiting for the media stream.
    Waiting,
    /// Talking.
    Live,
    /// The outcome is final.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TurnKind {
    Greeting,
    Reply,
    Fallback,
    WrapUp,
    IdlePrompt,
    Goodbye,
    Voicemail,
}

impl TurnKind {
    /// Lines the caller cannot talk over: the call is ending.
    fn is_final_words(self) -> bool {
        matches!(self, TurnKind::Goodbye | TurnKind::Voicemail)
    }
}

/// The LLM part of a reply.
#[derive(Debug, Clone)]
struct LlmTurn {
    started_at: Millis,
    first_token_at: Option<Millis>,
    /// Everything the LLM streamed.
    text: String,
    usage: Option<(u64, u64)>,
    /// Characters of the prompt, for a token estimate when no usage arrives.
    prompt_chars: usize,
    done: bool,
}

/// What the persona is saying (or about to say).
#[derive(Debug, Clone)]
struct Turn {
    id: u32,
    kind: TurnKind,
    context: String,
    llm: Option<LlmTurn>,
    splitter: SentenceSplitter,
    /// Text handed to TTS so far.
    text_sent: String,
    /// All text sent and flushed: no more is coming.
    flushed: bool,
    tts_finished: bool,
    /// Text is waiting for audio since this time (TTS timeout).
    awaiting_audio_since: Option<Millis>,
    last_audio_at: Option<Millis>,
    audio_received: u64,
    /// (audio bytes received, characters of `text_sent` they cover), for mapping what was heard
    /// back to words.
    alignment: Vec<(u64, u32)>,
    chars_aligned: u32,
    /// When the caller's turn this replies to ended (response time).
    replying_since: Option<Millis>,
    response_recorded: bool,
    hang_up_after: bool,
    tts_retried: bool,
}

impl Turn {
    fn new(id: u32, kind: TurnKind) -> Self {
        Self {
            id,
            kind,
            context: format!("t{id}"),
            llm: None,
            splitter: SentenceSplitter::new(),
            text_sent: String::new(),
            flushed: false,
            tts_finished: false,
            awaiting_audio_since: None,
            last_audio_at: None,
            audio_received: 0,
            alignment: Vec::new(),
            chars_aligned: 0,
            replying_since: None,
            response_recorded: false,
            hang_up_after: false,
            tts_retried: false,
        }
    }

    fn llm_running(&self) -> bool {
        self.llm.as_ref().is_some_and(|llm| !llm.done)
    }

    /// Characters of `text_sent` covered by the first `bytes` of audio: from the provider's
    /// alignment where it gave one, else in proportion to the audio received so far.
    fn chars_for_bytes(&self, bytes: u64) -> usize {
        if bytes == 0 {
            return 0;
        }
        if !self.alignment.is_empty() {
            let mut previous = (0u64, 0u32);
            for &(end, chars) in &self.alignment {
                if bytes <= end {
                    let span = (end - previous.0).max(1);
                    let within = u64::from(chars - previous.1) * (bytes - previous.0) / span;
                    return (u64::from(previous.1) + within) as usize;
                }
                previous = (end, chars);
            }
            return previous.1 as usize;
        }
        let total_chars = self.text_sent.chars().count() as u64;
        if self.audio_received == 0 {
            return 0;
        }
        (total_chars * bytes.min(self.audio_received) / self.audio_received) as usize
    }
}

/// The caller's side of the conversation.
#[derive(Debug, Clone, Default)]
struct Caller {
    /// Final transcript text of the turn in progress.
    pending: String,
    /// Last time the caller spoke or the persona stopped speaking (idle timer).
    last_activity: Millis,
    idle_prompted: bool,
}

/// The STT link and the audio kept for replaying to a new connection.
#[derive(Debug, Clone)]
struct SttLink {
    connected: bool,
    /// Caller audio since the last final result.
    replay: VecDeque<u8>,
    replay_cap: usize,
}

/// Counts of consecutive failures per provider.
#[derive(Debug, Clone, Copy, Default)]
struct Streaks {
    stt: u8,
    llm: u8,
    tts: u8,
}

#[derive(Debug, Clone, Copy)]
struct Ending {
    reason: EndReason,
    deadline: Millis,
    hang_up_sent_at: Option<Millis>,
}

/// One call's conversation.
#[derive(Debug, Clone)]
pub struct Engine {
    plan: CallPlan,
    config: EngineConfig,
    phase: Phase,
    stream_sid: Option<String>,
    transcript: Transcript,
    turn: Option<Turn>,
    next_turn: u32,
    playout: Playout,
    pump_at: Option<Millis>,
    meter: Meter,
    watch: LimitWatch,
    last_limit_check: Millis,
    caller: Caller,
    stt: SttLink,
    tts_connected: bool,
    replies: u32,
    interruptions: u32,
    response_times_ms: Vec<u32>,
    dtmf_digits: u32,
    failures: Vec<FailureRecord>,
    streaks: Streaks,
    /// Fixed lines waiting for the persona to be free (a wrap-up warning).
    queued: VecDeque<(TurnKind, String)>,
    answered_by: Option<AnsweredBy>,
    /// A machine answered and we wait for its beep until then.
    awaiting_beep_until: Option<Millis>,
    ending: Option<Ending>,
    telephony_status: Option<CallStatus>,
    outcome: Option<CallOutcome>,
    last_wake: Option<Millis>,
}

impl Engine {
    pub fn new(plan: CallPlan, config: EngineConfig) -> Self {
        let replay_cap =
            usize::try_from(config.stt_replay_max_ms * BYTES_PER_MS).unwrap_or(120_000);
        Self {
            playout: Playout::new(config.frame_bytes(), config.lead_ms),
            meter: Meter::new(plan.rates),
            plan,
            config,
            phase: Phase::Waiting,
            stream_sid: None,
            transcript: Transcript::default(),
            turn: None,
            next_turn: 1,
            pump_at: None,
            watch: LimitWatch::default(),
            last_limit_check: 0,
            caller: Caller::default(),
            stt: SttLink {
                connected: false,
                replay: VecDeque::new(),
                replay_cap,
            },
            tts_connected: false,
            replies: 0,
            interruptions: 0,
            response_times_ms: Vec::new(),
            dtmf_digits: 0,
            failures: Vec::new(),
            streaks: Streaks::default(),
            queued: VecDeque::new(),
            answered_by: None,
            awaiting_beep_until: None,
            ending: None,
            telephony_status: None,
            outcome: None,
            last_wake: None,
        }
    }

    pub fn plan(&self) -> &CallPlan {
        &self.plan
    }

    pub fn stream_sid(&self) -> Option<&str> {
        self.stream_sid.as_deref()
    }

    /// Whether the media stream is up and the conversation running.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The record of the finished call (after [`Action::Finished`]).
    pub fn outcome(&self) -> Option<&CallOutcome> {
        self.outcome.as_ref()
    }

    /// The transcript so far.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Cost events recorded since the last call (for batched writes during the call).
    pub fn drain_cost_events(&mut self, now: Millis) -> Vec<crate::meter::CostEvent> {
        self.meter.drain_events(now)
    }

    /// Running cost so far.
    pub fn cost_so_far(&self, now: Millis) -> callmeback_domain::pricing::Cents {
        self.meter.total(now)
    }

    // -----------------------------------------------------------------------------------------
    // The per-frame path
    // -----------------------------------------------------------------------------------------

    /// One frame of caller audio. Meters it, keeps it for a replay to a reconnected STT, and
    /// says whether the glue should forward it now.
    #[inline]
    pub fn caller_audio(&mut self, audio: &[u8]) -> AudioRoute {
        if self.phase != Phase::Live {
            return AudioRoute::Drop;
        }
        let link = &mut self.stt;
        let overflow = (link.replay.len() + audio.len()).saturating_sub(link.replay_cap);
        if overflow > 0 {
            link.replay.drain(..overflow.min(link.replay.len()));
        }
        link.replay.extend(audio);
        if link.connected {
            self.meter
                .add_stt_audio_ms(audio.len() as u64 / BYTES_PER_MS);
            AudioRoute::Forward
        } else {
            AudioRoute::Buffered
        }
    }

    /// After [`Event::SttConnected`]: the caller audio the new connection must hear first (what
    /// the old one heard without finishing it, and what arrived while none was open).
    pub fn audio_to_replay(&mut self) -> Vec<u8> {
        let audio: Vec<u8> = self.stt.replay.iter().copied().collect();
        self.meter
            .add_stt_audio_ms(audio.len() as u64 / BYTES_PER_MS);
        audio
    }

    // -----------------------------------------------------------------------------------------
    // Events
    // -----------------------------------------------------------------------------------------

    /// Reacts to one event at time `now`, appending what to do to `out`.
    pub fn handle(&mut self, now: Millis, event: Event, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        match event {
            Event::StreamStarted { stream_sid } => self.on_stream_started(now, stream_sid, out),
            Event::StreamStopped => self.finish(now, None, out),
            Event::Mark { name } => {
                self.playout.on_mark(&name, now);
            }
            Event::Dtmf { .. } => self.dtmf_digits += 1,
            Event::Stt(stt) => self.on_stt(now, stt, out),
            Event::SttConnected => {
                self.stt.connected = true;
                self.streaks.stt = 0;
            }
            Event::SttLost { .. } => {
                self.stt.connected = false;
                self.failed(now, Provider::Stt, "disconnected", out);
                self.streaks.stt += 1;
                if self.streaks.stt >= 2 {
                    self.end_politely(now, EndReason::ProviderFailed(Provider::Stt), out);
                }
            }
            Event::Llm { turn, event } => self.on_llm(now, turn, event, out),
            Event::Tts(tts) => self.on_tts(now, tts, out),
            Event::TtsConnected => self.on_tts_connected(now, out),
            Event::TtsLost { .. } => {
                self.tts_connected = false;
                self.tts_failed(now, "disconnected", out);
            }
            Event::Tick => self.on_tick(now, out),
            Event::Answered => self.meter.answered(now),
            Event::AnsweredBy(answered_by) => self.on_answered_by(now, answered_by, out),
            Event::TelephonyEnded {
                status,
                duration_secs,
            } => {
                if let Some(seconds) = duration_secs {
                    self.meter.set_billed_seconds(seconds);
                }
                self.telephony_status = Some(status);
                self.finish(now, None, out);
            }
            Event::HangUpRequested => {
                if self.ending.is_none() {
                    self.cut_turn(now, false, out);
                    self.ending = Some(Ending {
                        reason: EndReason::HangUpRequested,
                        deadline: now,
                        hang_up_sent_at: None,
                    });
                }
                self.send_hang_up(now, out);
            }
        }
        self.request_wake(now, out);
    }

    fn on_stream_started(&mut self, now: Millis, stream_sid: String, out: &mut Vec<Action>) {
        if self.phase != Phase::Waiting {
            return;
        }
        self.phase = Phase::Live;
        self.stream_sid = Some(stream_sid);
        self.meter.answered(now);
        self.caller.last_activity = now;
        self.last_limit_check = now;
        out.push(Action::SetStatus(CallStatus::InProgress));
        let greeting = self.plan.greeting.clone();
        match self.answered_by {
            // A machine already answered and the beep came: the message, not the greeting.
            Some(AnsweredBy::MachineReady | AnsweredBy::Fax) => self.on_machine_ready(now, out),
            Some(AnsweredBy::MachineGreeting) => {}
            _ => self.speak(now, TurnKind::Greeting, &greeting, out),
        }
    }

    fn on_stt(&mut self, now: Millis, event: SttEvent, out: &mut Vec<Action>) {
        if self.phase != Phase::Live {
            return;
        }
        match event {
            SttEvent::SpeechStarted => {
                self.caller.last_activity = now;
            }
            SttEvent::Transcript {
                text,
                is_final,
                speech_final,
            } => {
                let words = meaningful_words(&text);
                if words > 0 || !text.trim().is_empty() {
                    self.caller.last_activity = now;
                    self.caller.idle_prompted = false;
                }
                if is_final {
                    // Audio up to here is transcribed: no replay needed for it.
                    self.stt.replay.clear();
                }
                if self.persona_busy(now) {
                    let finals_interrupt = is_final && words > 0;
                    if finals_interrupt || words >= self.config.barge_in_min_words {
                        if self.turn.as_ref().is_some_and(|t| t.kind.is_final_words()) {
                            return; // the call is ending; the caller cannot stop the goodbye
                        }
                        self.barge_in(now, out);
                    } else {
                        // A backchannel or echo over the persona: not a turn.
                        return;
                    }
                }
                if is_final && !text.trim().is_empty() {
                    if !self.caller.pending.is_empty() {
                        self.caller.pending.push(' ');
                    }
                    self.caller.pending.push_str(text.trim());
                }
                if speech_final && !self.caller.pending.is_empty() {
                    self.end_caller_turn(now, out);
                }
            }
            SttEvent::UtteranceEnd => {
                if !self.caller.pending.is_empty() && !self.persona_busy(now) {
                    self.end_caller_turn(now, out);
                }
            }
        }
    }

    /// The persona is talking or about to.
    fn persona_busy(&self, now: Millis) -> bool {
        self.turn.is_some() || !self.playout.is_idle(now)
    }

    fn end_caller_turn(&mut self, now: Millis, out: &mut Vec<Action>) {
        let text = std::mem::take(&mut self.caller.pending);
        self.record_line(now, Role::User, text, false, out);
        self.caller.last_activity = now;
        if self.ending.is_some() {
            return;
        }
        // A reply follows at once: a warning's wrap-up line waits for it (said now, the reply
        // would replace it unheard).
        self.check_limits(now, true, out);
        if self.ending.is_some() {
            return;
        }
        self.start_reply(now, out);
    }

    fn start_reply(&mut self, now: Millis, out: &mut Vec<Action>) {
        let mut turn = self.new_turn(TurnKind::Reply);
        let messages = self
            .transcript
            .chat_messages(&self.plan.system_prompt, self.config.max_history_chars);
        let prompt_chars = messages.iter().map(|m| m.content.len()).sum();
        turn.llm = Some(LlmTurn {
            started_at: now,
            first_token_at: None,
            text: String::new(),
            usage: None,
            prompt_chars,
            done: false,
        });
        turn.replying_since = Some(now);
        out.push(Action::StartLlm {
            turn: turn.id,
            request: LlmRequest {
                messages,
                max_tokens: self.plan.llm.max_tokens,
                temperature: self.plan.llm.temperature,
            },
        });
        // The synthesis context is opened while the LLM thinks, so the first sentence only
        // waits for synthesis.
        out.push(Action::TtsOpen {
            context: turn.context.clone(),
        });
        self.begin_turn(turn);
    }

    fn new_turn(&mut self, kind: TurnKind) -> Turn {
        let id = self.next_turn;
        self.next_turn += 1;
        Turn::new(id, kind)
    }

    fn begin_turn(&mut self, turn: Turn) {
        self.playout.begin_utterance();
        self.turn = Some(turn);
    }

    /// Says a fixed line (no LLM).
    fn speak(&mut self, now: Millis, kind: TurnKind, text: &str, out: &mut Vec<Action>) {
        let mut turn = self.new_turn(kind);
        turn.hang_up_after = kind.is_final_words();
        out.push(Action::TtsOpen {
            context: turn.context.clone(),
        });
        self.begin_turn(turn);
        self.send_text(now, text, out);
        self.flush_turn(out);
    }

    /// Hands text to TTS for the current turn.
    fn send_text(&mut self, now: Millis, text: &str, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let text = if text.ends_with(' ') {
            text.to_owned()
        } else {
            format!("{text} ")
        };
        turn.text_sent.push_str(&text);
        turn.awaiting_audio_since.get_or_insert(now);
        self.meter
            .add_tts_chars(text.trim_end().chars().count() as u64, now);
        out.push(Action::TtsText {
            context: turn.context.clone(),
            text,
        });
    }

    fn flush_turn(&mut self, out: &mut Vec<Action>) {
        if let Some(turn) = self.turn.as_mut()
            && !turn.flushed
        {
            turn.flushed = true;
            out.push(Action::TtsFlush {
                context: turn.context.clone(),
            });
        }
    }

    // -----------------------------------------------------------------------------------------
    // LLM
    // -----------------------------------------------------------------------------------------

    fn on_llm(&mut self, now: Millis, turn_id: u32, event: LlmEvent, out: &mut Vec<Action>) {
        let Some(turn) = self
            .turn
            .as_mut()
            .filter(|t| t.id == turn_id && t.llm_running())
        else {
            return; // a cancelled turn's stream: ignore
        };
        let llm = turn
            .llm
            .as_mut()
            .expect("invariant: llm_running implies llm");
        match event {
            LlmEvent::Delta(text) => {
                llm.first_token_at.get_or_insert(now);
                llm.text.push_str(&text);
                self.streaks.llm = 0;
                let sentences = turn.splitter.push(&text);
                for sentence in sentences {
                    self.send_text(now, &sentence, out);
                }
            }
            LlmEvent::Usage {
                prompt_tokens,
                completion_tokens,
            } => llm.usage = Some((prompt_tokens, completion_tokens)),
            LlmEvent::Finished => {
                llm.done = true;
                let (prompt, completion) = llm.usage.unwrap_or_else(|| estimate_tokens(llm));
                let produced = !llm.text.trim().is_empty();
                self.meter.add_llm(prompt, completion, now);
                if !produced {
                    self.llm_failed(now, "empty_reply", out);
                    return;
                }
                if let Some(rest) = turn.splitter.finish() {
                    self.send_text(now, &rest, out);
                }
                self.flush_turn(out);
            }
            LlmEvent::Failed(_) => {
                llm.done = true;
                let produced = !llm.text.trim().is_empty();
                let (prompt, completion) = llm.usage.unwrap_or_else(|| estimate_tokens(llm));
                if produced {
                    // Part of a reply arrived: say it rather than start over.
                    let rest = turn.splitter.finish();
                    self.meter.add_llm(prompt, completion, now);
                    self.failed(now, Provider::Llm, "stream_broken", out);
                    if let Some(rest) = rest {
                        self.send_text(now, &rest, out);
                    }
                    self.flush_turn(out);
                } else {
                    self.llm_failed(now, "request_failed", out);
                }
            }
        }
    }

    /// The LLM gave nothing usable for the current turn: a fallback line, or after two in a
    /// row, a polite goodbye.
    fn llm_failed(&mut self, now: Millis, kind: &'static str, out: &mut Vec<Action>) {
        self.failed(now, Provider::Llm, kind, out);
        self.streaks.llm += 1;
        if let Some(turn) = self.turn.take() {
            if turn.llm_running() {
                out.push(Action::CancelLlm { turn: turn.id });
            }
            out.push(Action::TtsClose {
                context: turn.context,
            });
        }
        if self.streaks.llm >= 2 {
            self.end_politely(now, EndReason::ProviderFailed(Provider::Llm), out);
        } else {
            let line = self.config.lines.fallback.clone();
            self.speak(now, TurnKind::Fallback, &line, out);
        }
    }

    // -----------------------------------------------------------------------------------------
    // TTS
    // -----------------------------------------------------------------------------------------

    fn on_tts(&mut self, now: Millis, event: TtsEvent, out: &mut Vec<Action>) {
        match event {
            TtsEvent::Audio {
                context,
                audio,
                chars,
            } => {
                let Some(turn) = self.turn.as_mut().filter(|t| t.context == context) else {
                    return; // audio of an abandoned context
                };
                turn.audio_received += audio.len() as u64;
                if let Some(chars) = chars {
                    turn.chars_aligned += chars;
                    turn.alignment
                        .push((turn.audio_received, turn.chars_aligned));
                }
                turn.awaiting_audio_since = None;
                turn.last_audio_at = Some(now);
                self.streaks.tts = 0;
                self.playout.push(&audio);
                self.pump(now, out);
            }
            TtsEvent::ContextFinished { context } => {
                if let Some(turn) = self.turn.as_mut().filter(|t| t.context == context) {
                    if turn.flushed && turn.audio_received == 0 && !turn.text_sent.trim().is_empty()
                    {
                        // The provider says it is done but produced nothing: the caller heard
                        // nothing, so this is a failure (retried), not a line that was said.
                        self.tts_failed(now, "no_audio", out);
                        return;
                    }
                    turn.tts_finished = true;
                    turn.awaiting_audio_since = None;
                }
                self.maybe_finish_turn(now, out);
            }
        }
    }

    fn on_tts_connected(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.tts_connected = true;
        // A turn that lost its connection is retried on the new one with what was not heard.
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !turn.tts_retried || turn.tts_finished || turn.text_sent.is_empty() {
            return;
        }
        if turn.awaiting_audio_since.is_none() && turn.audio_received > 0 && turn.flushed {
            return;
        }
        let covered = turn.chars_for_bytes(turn.audio_received);
        let remaining: String = turn.text_sent.chars().skip(covered).collect();
        let old_context = std::mem::replace(&mut turn.context, format!("t{}r", turn.id));
        out.push(Action::TtsClose {
            context: old_context,
        });
        out.push(Action::TtsOpen {
            context: turn.context.clone(),
        });
        // The retry's audio maps to the remaining text from zero.
        turn.text_sent = turn.text_sent.chars().take(covered).collect();
        turn.alignment.clear();
        turn.chars_aligned = 0;
        let flushed = std::mem::replace(&mut turn.flushed, false);
        if !remaining.trim().is_empty() {
            self.send_text(now, &remaining, out);
        }
        if flushed {
            self.flush_turn(out);
        }
    }

    /// TTS failed for the current turn: retry once, then give the line up; two failures in a
    /// row end the call.
    fn tts_failed(&mut self, now: Millis, kind: &'static str, out: &mut Vec<Action>) {
        self.failed(now, Provider::Tts, kind, out);
        self.streaks.tts += 1;
        if self.streaks.tts >= 2 {
            if let Some(turn) = self.turn.take() {
                if turn.llm_running() {
                    out.push(Action::CancelLlm { turn: turn.id });
                }
                self.record_heard(now, &turn, true, out);
            }
            // Nothing can be said any more: hang up.
            if self.ending.is_none() {
                self.ending = Some(Ending {
                    reason: EndReason::ProviderFailed(Provider::Tts),
                    deadline: now,
                    hang_up_sent_at: None,
                });
            }
            self.send_hang_up(now, out);
            return;
        }
        if let Some(turn) = self.turn.as_mut() {
            turn.tts_retried = true;
            turn.awaiting_audio_since = Some(now);
            if self.tts_connected {
                // The socket is fine (a timeout): retry on a fresh context now.
                self.on_tts_connected(now, out);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Playback and turn completion
    // -----------------------------------------------------------------------------------------

    fn pump(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.pump_at = self.playout.pump(now, out);
        if let Some(turn) = self.turn.as_mut()
            && !turn.response_recorded
            && let (Some(since), Some(first)) = (turn.replying_since, self.playout.first_sent_at())
        {
            turn.response_recorded = true;
            self.response_times_ms
                .push(u32::try_from(first.saturating_sub(since)).unwrap_or(u32::MAX));
        }
    }

    fn maybe_finish_turn(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let settled = turn.tts_finished
            || turn
                .last_audio_at
                .is_some_and(|at| now >= at + TTS_SETTLE_MS);
        if !(turn.flushed && settled && self.playout.is_idle(now)) {
            return;
        }
        let turn = self.turn.take().expect("invariant: checked above");
        if !turn.tts_finished {
            out.push(Action::TtsClose {
                context: turn.context.clone(),
            });
        }
        self.record_heard(now, &turn, false, out);
        if turn.kind == TurnKind::Reply {
            self.replies += 1;
        }
        self.caller.last_activity = now;
        if turn.hang_up_after {
            self.send_hang_up(now, out);
            return;
        }
        if self.ending.is_some() {
            return;
        }
        self.check_limits(now, false, out);
        if self.ending.is_none()
            && self.turn.is_none()
            && let Some((kind, line)) = self.queued.pop_front()
        {
            self.speak(now, kind, &line, out);
        }
    }

    /// Records the persona's line as far as the caller heard it.
    fn record_heard(&mut self, now: Millis, turn: &Turn, cut: bool, out: &mut Vec<Action>) {
        let text = if cut {
            let heard = self.playout.clear(now);
            heard_prefix(&turn.text_sent, turn.chars_for_bytes(heard))
        } else {
            turn.text_sent.trim().to_owned()
        };
        if !text.is_empty() {
            self.record_line(now, Role::Assistant, text, cut, out);
        }
    }

    /// Stops the current turn where the caller is: audio cleared, LLM and TTS cancelled, the
    /// line cut at what was heard. `interruption` counts it as the caller's barge-in.
    fn cut_turn(&mut self, now: Millis, interruption: bool, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.take() else {
            if !self.playout.is_idle(now) {
                self.playout.clear(now);
                out.push(Action::ClearAudio);
            }
            return;
        };
        let audio_sent = self.playout.sent_bytes() > 0;
        if audio_sent {
            out.push(Action::ClearAudio);
        }
        if turn.llm_running() {
            out.push(Action::CancelLlm { turn: turn.id });
            if let Some(llm) = &turn.llm {
                let (prompt, completion) = estimate_tokens(llm);
                self.meter.add_llm(prompt, completion, now);
            }
        }
        if !turn.tts_finished {
            out.push(Action::TtsClose {
                context: turn.context.clone(),
            });
        }
        self.record_heard(now, &turn, true, out);
        if interruption && audio_sent {
            self.interruptions += 1;
        }
    }

    fn barge_in(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.cut_turn(now, true, out);
    }

    // -----------------------------------------------------------------------------------------
    // Time
    // -----------------------------------------------------------------------------------------

    fn on_tick(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.phase == Phase::Waiting {
            return;
        }
        self.pump(now, out);
        if let Some(turn) = self.turn.as_ref() {
            let llm_timed_out = turn.llm.as_ref().is_some_and(|llm| {
                !llm.done
                    && llm.first_token_at.is_none()
                    && now >= llm.started_at + self.config.llm_first_token_timeout_ms
            });
            let tts_timed_out = turn
                .awaiting_audio_since
                .is_some_and(|since| now >= since + self.config.tts_timeout_ms);
            if llm_timed_out {
                let id = turn.id;
                if let Some(llm) = self.turn.as_mut().and_then(|t| t.llm.as_mut()) {
                    llm.done = true;
                }
                out.push(Action::CancelLlm { turn: id });
                self.llm_failed(now, "first_token_timeout", out);
            } else if tts_timed_out {
                self.tts_failed(now, "timeout", out);
            }
        }
        self.maybe_finish_turn(now, out);
        if now >= self.last_limit_check + self.config.limit_check_interval_ms || self.watch_due(now)
        {
            self.check_limits(now, false, out);
        }
        self.check_idle(now, out);
        if let Some(until) = self.awaiting_beep_until
            && now >= until
        {
            // No beep came: leave the message anyway.
            self.on_machine_ready(now, out);
        }
        if let Some(ending) = self.ending {
            match ending.hang_up_sent_at {
                None if now >= ending.deadline => self.send_hang_up(now, out),
                Some(sent) if now >= sent + HANGUP_CONFIRM_MS => self.finish(now, None, out),
                _ => {}
            }
        }
    }

    /// Whether a time limit crossed its warning or cut-off point since the last check. Measured
    /// from that check, not from `now`: timers fire late, and a threshold passed even 1 ms ago
    /// must still count (else silence carries the call to the next periodic check).
    fn watch_due(&self, now: Millis) -> bool {
        let answered = self.meter.answered_at().unwrap_or(now);
        self.watch
            .next_time_threshold(
                &self.plan.limits,
                answered,
                self.last_limit_check.min(now.saturating_sub(1)),
                self.config.goodbye_lead_ms,
            )
            .is_some_and(|at| at <= now)
    }

    fn check_idle(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.ending.is_some() || self.persona_busy(now) || !self.caller.pending.is_empty() {
            return;
        }
        let silent_for = now.saturating_sub(self.caller.last_activity);
        if !self.caller.idle_prompted && silent_for >= self.config.idle_prompt_ms {
            self.caller.idle_prompted = true;
            let line = self.config.lines.idle_prompt.clone();
            self.speak(now, TurnKind::IdlePrompt, &line, out);
        } else if self.caller.idle_prompted && silent_for >= self.config.idle_hangup_ms {
            self.end_politely(now, EndReason::Idle, out);
        }
    }

    /// Asks for the next tick: the earliest of pacing, timeouts, limits and the periodic check.
    fn request_wake(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.phase != Phase::Live {
            return;
        }
        let mut next = self.last_limit_check + self.config.limit_check_interval_ms;
        let mut consider = |at: Option<Millis>| {
            if let Some(at) = at {
                next = next.min(at);
            }
        };
        consider(self.pump_at);
        if let Some(turn) = &self.turn {
            consider(
                turn.llm
                    .as_ref()
                    .filter(|llm| !llm.done && llm.first_token_at.is_none())
                    .map(|llm| llm.started_at + self.config.llm_first_token_timeout_ms),
            );
            consider(
                turn.awaiting_audio_since
                    .map(|since| since + self.config.tts_timeout_ms),
            );
            if turn.flushed {
                // When playback ends (or the provider's "finished" is overdue).
                let playback_end = self.playout.playback_end();
                consider(Some(playback_end.max(now + 1)));
                if !turn.tts_finished {
                    consider(turn.last_audio_at.map(|at| at + TTS_SETTLE_MS));
                }
            }
        }
        let answered = self.meter.answered_at().unwrap_or(now);
        consider(self.watch.next_time_threshold(
            &self.plan.limits,
            answered,
            now,
            self.config.goodbye_lead_ms,
        ));
        if self.ending.is_none() && self.turn.is_none() {
            let idle_wait = if self.caller.idle_prompted {
                self.config.idle_hangup_ms
            } else {
                self.config.idle_prompt_ms
            };
            consider(Some(self.caller.last_activity + idle_wait));
        }
        consider(self.awaiting_beep_until);
        if let Some(ending) = self.ending {
            consider(Some(match ending.hang_up_sent_at {
                None => ending.deadline,
                Some(sent) => sent + HANGUP_CONFIRM_MS,
            }));
        }
        let next = next.max(now + 1);
        if self.last_wake != Some(next) {
            self.last_wake = Some(next);
            out.push(Action::WakeAt(next));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Limits
    // -----------------------------------------------------------------------------------------

    /// Checks the limits and acts on them; `reply_follows`: the caller just finished a turn and
    /// its reply starts next, so a wrap-up line is queued behind it.
    fn check_limits(&mut self, now: Millis, reply_follows: bool, out: &mut Vec<Action>) {
        self.last_limit_check = now;
        let Some(answered) = self.meter.answered_at() else {
            return;
        };
        let verdicts = self.watch.check(
            &self.plan.limits,
            now.saturating_sub(answered),
            self.meter.total(now),
            self.config.goodbye_lead_ms,
        );
        for verdict in verdicts {
            let call_id = self.plan.call_id.clone();
            match verdict {
                Verdict::Warn {
                    limit,
                    percent_used,
                } => {
                    out.push(Action::Publish(LiveEvent::BudgetWarning {
                        call_id,
                        limit,
                        percent_used,
                    }));
                    let line = self.config.lines.wrap_up.clone();
                    if reply_follows || self.persona_busy(now) || !self.caller.pending.is_empty() {
                        self.queued.push_back((TurnKind::WrapUp, line));
                    } else {
                        self.speak(now, TurnKind::WrapUp, &line, out);
                    }
                }
                Verdict::CutOff { limit } => {
                    out.push(Action::Publish(LiveEvent::LimitReached {
                        call_id,
                        limit,
                        ending: true,
                    }));
                    self.end_politely(now, EndReason::LimitReached(limit), out);
                }
                Verdict::OverBudget { limit } => {
                    out.push(Action::Publish(LiveEvent::LimitReached {
                        call_id,
                        limit,
                        ending: false,
                    }));
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Voicemail
    // -----------------------------------------------------------------------------------------

    fn on_answered_by(&mut self, now: Millis, answered_by: AnsweredBy, out: &mut Vec<Action>) {
        self.answered_by = Some(answered_by);
        match answered_by {
            AnsweredBy::Human | AnsweredBy::Unknown => {}
            AnsweredBy::MachineGreeting => {
                // Talking over the machine's greeting is wasted: wait for the beep.
                if self.phase == Phase::Live && self.ending.is_none() {
                    self.cut_turn(now, false, out);
                    self.awaiting_beep_until = Some(now + self.config.voicemail_beep_timeout_ms);
                }
            }
            AnsweredBy::MachineReady | AnsweredBy::Fax => {
                if self.phase == Phase::Live {
                    self.on_machine_ready(now, out);
                }
            }
        }
    }

    fn on_machine_ready(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.awaiting_beep_until = None;
        if self.ending.is_some() {
            return;
        }
        self.cut_turn(now, false, out);
        self.ending = Some(Ending {
            reason: EndReason::Voicemail,
            deadline: now + self.config.goodbye_timeout_ms,
            hang_up_sent_at: None,
        });
        let leave_message = self.plan.voicemail.action == VoicemailAction::LeaveMessage
            && self.answered_by != Some(AnsweredBy::Fax);
        if leave_message && self.streaks.tts < 2 {
            let message = self.plan.voicemail.message.clone();
            self.speak(now, TurnKind::Voicemail, &message, out);
        } else {
            self.send_hang_up(now, out);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Ending
    // -----------------------------------------------------------------------------------------

    /// Ends the call with a goodbye line (if anything can still be said), then hangs up.
    fn end_politely(&mut self, now: Millis, reason: EndReason, out: &mut Vec<Action>) {
        if self.ending.is_some() || self.phase != Phase::Live {
            return;
        }
        self.cut_turn(now, false, out);
        self.queued.clear();
        self.ending = Some(Ending {
            reason,
            deadline: now + self.config.goodbye_timeout_ms,
            hang_up_sent_at: None,
        });
        let line = match reason {
            EndReason::LimitReached(_) => self.config.lines.limit_goodbye.clone(),
            EndReason::Idle => self.config.lines.idle_goodbye.clone(),
            _ => self.config.lines.trouble_goodbye.clone(),
        };
        if self.streaks.tts < 2 {
            self.speak(now, TurnKind::Goodbye, &line, out);
        } else {
            self.send_hang_up(now, out);
        }
    }

    fn send_hang_up(&mut self, now: Millis, out: &mut Vec<Action>) {
        let ending = self.ending.get_or_insert(Ending {
            reason: EndReason::HangUpRequested,
            deadline: now,
            hang_up_sent_at: None,
        });
        if ending.hang_up_sent_at.is_none() {
            ending.hang_up_sent_at = Some(now);
            out.push(Action::HangUp);
        }
    }

    /// The call is over (stream gone, telephony said so, or the hang-up went unconfirmed).
    fn finish(&mut self, now: Millis, _reason: Option<EndReason>, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        self.meter.ended(now);
        if let Some(turn) = self.turn.take() {
            if turn.llm_running() {
                out.push(Action::CancelLlm { turn: turn.id });
                if let Some(llm) = &turn.llm {
                    let (prompt, completion) = estimate_tokens(llm);
                    self.meter.add_llm(prompt, completion, now);
                }
            }
            if !turn.tts_finished {
                out.push(Action::TtsClose {
                    context: turn.context.clone(),
                });
            }
            // The line as far as it played before the line went dead.
            self.record_heard(now, &turn, self.playout.sent_bytes() > 0, out);
        }
        if !self.caller.pending.is_empty() {
            let text = std::mem::take(&mut self.caller.pending);
            self.record_line(now, Role::User, text, false, out);
        }
        let answered = self.meter.answered_at().is_some();
        let machine = self.answered_by.is_some_and(AnsweredBy::is_machine);
        let status = if answered && machine {
            CallStatus::Voicemail
        } else if answered {
            CallStatus::Completed
        } else {
            match self.telephony_status {
                Some(status) if status.is_final() && status != CallStatus::Completed => status,
                // Twilio says completed but nothing was ever answered: it never connected.
                _ => CallStatus::Failed,
            }
        };
        let reason = match (self.ending, status) {
            (Some(ending), _) => ending.reason,
            (None, CallStatus::Completed | CallStatus::Voicemail) => EndReason::CallerHungUp,
            (None, _) => EndReason::NotAnswered,
        };
        self.phase = Phase::Ended;
        let duration_secs = self.meter.telephony_seconds(now);
        let credits_used = self
            .plan
            .limits
            .credits_at_start
            .map_or(0, |credits| duration_secs.div_ceil(60).min(credits));
        let cost_events = self.meter.final_events(now);
        let response_times_ms = std::mem::take(&mut self.response_times_ms);
        let avg_response_ms = (!response_times_ms.is_empty()).then(|| {
            let sum: u64 = response_times_ms.iter().map(|&ms| u64::from(ms)).sum();
            u32::try_from(sum / response_times_ms.len() as u64).unwrap_or(u32::MAX)
        });
        self.outcome = Some(CallOutcome {
            call_id: self.plan.call_id.clone(),
            status,
            end_reason: reason,
            answered_at_ms: self.meter.answered_at(),
            ended_at_ms: now,
            duration_secs,
            usage: self.meter.usage(now),
            cost: self.meter.breakdown(now),
            credits_used,
            transcript: self.transcript.lines().to_vec(),
            turn_count: self.replies,
            interrupt_count: self.interruptions,
            avg_response_ms,
            response_times_ms,
            failures: std::mem::take(&mut self.failures),
            answered_by: self.answered_by,
            cost_events,
            next_cost_seq: self.meter.next_seq(),
            summary: None,
        });
        out.push(Action::Finished);
    }

    // -----------------------------------------------------------------------------------------
    // Small helpers
    // -----------------------------------------------------------------------------------------

    fn record_line(
        &mut self,
        now: Millis,
        role: Role,
        text: String,
        interrupted: bool,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Publish(LiveEvent::Transcript {
            call_id: self.plan.call_id.clone(),
            role,
            text: text.clone(),
            at_ms: now,
            interrupted,
        }));
        self.transcript.push(Line {
            role,
            text,
            at_ms: now,
            interrupted,
        });
    }

    fn failed(
        &mut self,
        now: Millis,
        provider: Provider,
        kind: &'static str,
        out: &mut Vec<Action>,
    ) {
        self.failures.push(FailureRecord {
            provider,
            kind: kind.to_owned(),
            at_ms: now,
        });
        out.push(Action::Failure { provider, kind });
    }
}

/// Words of a transcript that are not backchannels.
fn meaningful_words(text: &str) -> u32 {
    let count = text
        .split_whitespace()
        .map(|word| {
            word.trim_matches(|c: char| !c.is_alphanumeric() && c != '-')
                .to_lowercase()
        })
        .filter(|word| !word.is_empty() && !BACKCHANNELS.contains(&word.as_str()))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Token estimate for a stream that ended without usage (cancelled): about four characters a
/// token, rounded up, so budgets err on the side of counting too much.
fn estimate_tokens(llm: &LlmTurn) -> (u64, u64) {
    let prompt = (llm.prompt_chars as u64).div_ceil(4);
    let completion = (llm.text.len() as u64).div_ceil(4);
    (prompt, completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backchannels_are_not_words() {
        assert_eq!(meaningful_words("mhm"), 0);
        assert_eq!(meaningful_words("Yeah, okay."), 0);
        assert_eq!(meaningful_words("uh-huh"), 0);
        assert_eq!(meaningful_words("wait, stop"), 2);
        assert_eq!(meaningful_words("yeah but no"), 2);
    }
}
