//! The engine's rules, driven with a fake clock: every event is delivered at a chosen time and
//! the actions are checked, the way the Durable Object would see them.

use callmeback_domain::calls::{AnsweredBy, CallStatus, VoicemailAction};
use callmeback_domain::pricing::RATES_2025;
use callmeback_media::events::ChatRole;
use callmeback_media::limits::LimitKind;
use callmeback_media::plan::{CallLimits, LlmSpec, VoiceSettings, VoiceSpec, VoicemailPlan};
use callmeback_media::transcript::Role;
use callmeback_media::{
    Action, AudioRoute, CallPlan, EndReason, Engine, EngineConfig, Event, LiveEvent, LlmEvent,
    Provider, SttEvent, TtsEvent,
};

const START: u64 = 1_700_000_000_000;

fn plan() -> CallPlan {
    CallPlan {
        call_id: "call_test".to_owned(),
        user_id: "usr_test".to_owned(),
        persona_id: "brad".to_owned(),
        persona_name: "Brad".to_owned(),
        system_prompt: "You are Brad.".to_owned(),
        greeting: "Hey Ada, Brad here!".to_owned(),
        previous_memory: None,
        voicemail: VoicemailPlan {
            action: VoicemailAction::LeaveMessage,
            message: "Hi Ada, it's Brad. Call me back!".to_owned(),
        },
        voice: VoiceSpec {
            voice_id: "voice-brad".to_owned(),
            settings: VoiceSettings::default(),
        },
        llm: LlmSpec {
            temperature: 0.7,
            max_tokens: 150,
        },
        limits: CallLimits {
            max_duration_secs: 600,
            credits_at_start: None,
            per_call_budget_cents: 1000,
            monthly_remaining_cents: 10_000,
            warn_percent: 75,
            auto_cutoff: true,
        },
        rates: RATES_2025,
    }
}

struct Call {
    engine: Engine,
    now: u64,
    /// Every action so far.
    log: Vec<Action>,
}

impl Call {
    fn new(plan: CallPlan) -> Self {
        Self {
            engine: Engine::new(plan, EngineConfig::default()),
            now: START,
            log: Vec::new(),
        }
    }

    /// Answered and connected: STT and TTS up, the stream started.
    fn started(plan: CallPlan) -> Self {
        let mut call = Self::new(plan);
        call.send(Event::SttConnected);
        call.send(Event::TtsConnected);
        call.send(Event::StreamStarted {
            stream_sid: "MZ1".to_owned(),
        });
        call
    }

    fn send(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.engine.handle(self.now, event, &mut out);
        self.log.extend(out.iter().cloned());
        out
    }

    /// Moves the clock, delivering every tick the engine asked for on the way.
    fn advance(&mut self, ms: u64) -> Vec<Action> {
        let target = self.now + ms;
        let mut all = Vec::new();
        loop {
            let wake = self.log.iter().rev().find_map(|a| match a {
                Action::WakeAt(at) => Some(*at),
                _ => None,
            });
            match wake {
                Some(at) if at > self.now && at <= target => {
                    self.now = at;
                    all.extend(self.send(Event::Tick));
                }
                _ => break,
            }
        }
        self.now = target;
        all.extend(self.send(Event::Tick));
        all
    }

    fn audio(&mut self, context: &str, ms: u64) -> Vec<Action> {
        self.send(Event::Tts(TtsEvent::Audio {
            context: context.to_owned(),
            audio: vec![0x10; (ms * 8) as usize],
            chars: None,
        }))
    }

    fn aligned_audio(&mut self, context: &str, ms: u64, chars: u32) -> Vec<Action> {
        self.send(Event::Tts(TtsEvent::Audio {
            context: context.to_owned(),
            audio: vec![0x10; (ms * 8) as usize],
            chars: Some(chars),
        }))
    }

    fn tts_done(&mut self, context: &str) -> Vec<Action> {
        self.send(Event::Tts(TtsEvent::ContextFinished {
            context: context.to_owned(),
        }))
    }

    fn says(&mut self, text: &str) -> Vec<Action> {
        self.send(Event::Stt(SttEvent::Transcript {
            text: text.to_owned(),
            is_final: true,
            speech_final: true,
        }))
    }

    fn interim(&mut self, text: &str) -> Vec<Action> {
        self.send(Event::Stt(SttEvent::Transcript {
            text: text.to_owned(),
            is_final: false,
            speech_final: false,
        }))
    }

    fn llm(&mut self, turn: u32, event: LlmEvent) -> Vec<Action> {
        self.send(Event::Llm { turn, event })
    }

    /// Plays the greeting (context t1) to its end.
    fn greeting_played(&mut self) {
        self.audio("t1", 1500);
        self.tts_done("t1");
        self.advance(1600);
    }

    fn transcript(&self) -> Vec<(Role, String, bool)> {
        self.engine
            .transcript()
            .lines()
            .iter()
            .map(|l| (l.role, l.text.clone(), l.interrupted))
            .collect()
    }
}

fn has(actions: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(pred)
}

fn played_ms(actions: &[Action]) -> u64 {
    actions
        .iter()
        .map(|a| match a {
            Action::PlayAudio { audio, .. } => audio.len() as u64 / 8,
            _ => 0,
        })
        .sum()
}

fn llm_turn(actions: &[Action]) -> u32 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::StartLlm { turn, .. } => Some(*turn),
            _ => None,
        })
        .expect("an LLM request was started")
}

#[test]
fn the_persona_greets_first_and_its_first_audio_goes_out_at_once() {
    let mut call = Call::new(plan());
    call.send(Event::SttConnected);
    call.send(Event::TtsConnected);
    let actions = call.send(Event::StreamStarted {
        stream_sid: "MZ1".to_owned(),
    });
    assert!(has(&actions, |a| matches!(
        a,
        Action::SetStatus(CallStatus::InProgress)
    )));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsOpen { context } if context == "t1")
    ));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text == "Hey Ada, Brad here! ")
    ));
    assert!(has(&actions, |a| matches!(a, Action::TtsFlush { .. })));
    assert!(
        !has(&actions, |a| matches!(a, Action::StartLlm { .. })),
        "no LLM for the greeting"
    );

    let actions = call.audio("t1", 40);
    assert_eq!(
        played_ms(&actions),
        40,
        "the first audio is sent the moment it exists"
    );
    assert!(has(
        &actions,
        |a| matches!(a, Action::PlayAudio { mark, .. } if mark == "m1")
    ));
    call.audio("t1", 1460);
    call.tts_done("t1");
    call.advance(1600);
    assert_eq!(
        call.transcript(),
        vec![(Role::Assistant, "Hey Ada, Brad here!".to_owned(), false)]
    );
}

#[test]
fn a_caller_turn_gets_a_streamed_reply_sentence_by_sentence() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let actions = call.says("I want to run a marathon.");
    let turn = llm_turn(&actions);
    let request = actions
        .iter()
        .find_map(|a| match a {
            Action::StartLlm { request, .. } => Some(request.clone()),
            _ => None,
        })
        .unwrap();
    let roles: Vec<_> = request.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        vec![ChatRole::System, ChatRole::Assistant, ChatRole::User]
    );
    assert_eq!(request.messages[2].content, "I want to run a marathon.");
    assert_eq!(request.max_tokens, 150);
    assert!(
        has(
            &actions,
            |a| matches!(a, Action::TtsOpen { context } if context == "t2")
        ),
        "context opened before the first token"
    );

    let actions = call.llm(turn, LlmEvent::Delta("That's a big goal".to_owned()));
    assert!(
        !has(&actions, |a| matches!(a, Action::TtsText { .. })),
        "no sentence yet"
    );
    let actions = call.llm(turn, LlmEvent::Delta("! When is the race? I".to_owned()));
    let texts: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::TtsText { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["That's a big goal! ", "When is the race? "]);
    call.now += 5;
    let actions = call.audio("t2", 300);
    assert!(played_ms(&actions) > 0);
    call.llm(turn, LlmEvent::Delta(" can help.".to_owned()));
    call.llm(
        turn,
        LlmEvent::Usage {
            prompt_tokens: 40,
            completion_tokens: 12,
        },
    );
    let actions = call.llm(turn, LlmEvent::Finished);
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text == "I can help. ")
    ));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsFlush { context } if context == "t2")
    ));
    call.audio("t2", 2000);
    call.tts_done("t2");
    call.advance(3000);
    let transcript = call.transcript();
    assert_eq!(transcript.len(), 3);
    assert_eq!(
        transcript[2].1,
        "That's a big goal! When is the race? I can help."
    );

    call.send(Event::StreamStopped);
    let outcome = call.engine.outcome().expect("finished");
    assert_eq!(outcome.status, CallStatus::Completed);
    assert_eq!(outcome.turn_count, 1);
    assert_eq!(outcome.response_times_ms, vec![5]);
    assert_eq!(outcome.usage.llm_input_tokens, 40);
    assert_eq!(outcome.usage.llm_output_tokens, 12);
    assert_eq!(outcome.end_reason, EndReason::CallerHungUp);
}

#[test]
fn barge_in_clears_cancels_and_cuts_the_line_at_what_was_heard() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("Tell me about training plans."));
    call.llm(
        turn,
        LlmEvent::Delta(
            "Training plans start with easy runs. Then you add one long run every week.".to_owned(),
        ),
    );
    // 75 characters of text, 4 seconds of speech; alignment says 40 chars in the first 2 s.
    call.aligned_audio("t2", 2000, 40);
    call.aligned_audio("t2", 2000, 35);
    call.advance(1000);
    // One second in, the caller talks over the persona.
    let actions = call.interim("wait wait");
    assert!(has(&actions, |a| matches!(a, Action::ClearAudio)));
    assert!(has(
        &actions,
        |a| matches!(a, Action::CancelLlm { turn: t } if *t == turn)
    ));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsClose { context } if context == "t2")
    ));
    let transcript = call.transcript();
    let (role, text, interrupted) = transcript.last().unwrap().clone();
    assert_eq!(role, Role::Assistant);
    assert!(interrupted);
    // 1 s of 2 s covering 40 chars → 20 chars: "Training plans start" (whole words).
    assert_eq!(text, "Training plans start");
    // The rest of the stream and its audio are ignored.
    let actions = call.llm(turn, LlmEvent::Delta(" more".to_owned()));
    assert!(actions.iter().all(|a| matches!(a, Action::WakeAt(_))));
    assert_eq!(played_ms(&call.audio("t2", 500)), 0);

    let actions = call.says("Wait, I have a knee injury.");
    assert!(has(&actions, |a| matches!(a, Action::StartLlm { .. })));
    call.send(Event::StreamStopped);
    let outcome = call.engine.outcome().unwrap();
    assert_eq!(outcome.interrupt_count, 1);
}

#[test]
fn backchannels_and_echo_do_not_interrupt() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("How are you?"));
    call.llm(
        turn,
        LlmEvent::Delta("I'm great, thanks for asking! ".to_owned()),
    );
    call.audio("t2", 2000);
    call.advance(500);
    for noise in ["mhm", "yeah", "okay", "uh huh"] {
        let actions = call.interim(noise);
        assert!(
            !has(&actions, |a| matches!(a, Action::ClearAudio)),
            "{noise} interrupted"
        );
    }
    let actions = call.says("mhm");
    assert!(!has(&actions, |a| matches!(
        a,
        Action::ClearAudio | Action::StartLlm { .. }
    )));
    // One real word as an interim is not enough; as a final it is.
    assert!(!has(&call.interim("Stop"), |a| matches!(
        a,
        Action::ClearAudio
    )));
    assert!(has(&call.says("Stop."), |a| matches!(
        a,
        Action::ClearAudio
    )));
}

#[test]
fn utterance_end_closes_a_turn_that_endpointing_missed() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let actions = call.send(Event::Stt(SttEvent::Transcript {
        text: "I went running".to_owned(),
        is_final: true,
        speech_final: false,
    }));
    assert!(!has(&actions, |a| matches!(a, Action::StartLlm { .. })));
    let actions = call.send(Event::Stt(SttEvent::Transcript {
        text: "this morning".to_owned(),
        is_final: true,
        speech_final: false,
    }));
    assert!(!has(&actions, |a| matches!(a, Action::StartLlm { .. })));
    let actions = call.send(Event::Stt(SttEvent::UtteranceEnd));
    assert!(has(&actions, |a| matches!(a, Action::StartLlm { .. })));
    assert_eq!(call.transcript()[1].1, "I went running this morning");
    // A second UtteranceEnd with nothing pending does nothing.
    assert!(!has(
        &call.send(Event::Stt(SttEvent::UtteranceEnd)),
        |a| matches!(a, Action::StartLlm { .. })
    ));
}

#[test]
fn a_slow_llm_gets_a_fallback_line_and_two_failures_end_the_call() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("Hello?"));
    let actions = call.advance(4000);
    assert!(has(
        &actions,
        |a| matches!(a, Action::CancelLlm { turn: t } if *t == turn)
    ));
    assert!(has(&actions, |a| matches!(
        a,
        Action::Failure {
            provider: Provider::Llm,
            kind: "first_token_timeout"
        }
    )));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text.starts_with("Sorry, I lost my train"))
    ));
    let fallback_ctx = actions
        .iter()
        .find_map(|a| match a {
            Action::TtsOpen { context } => Some(context.clone()),
            _ => None,
        })
        .unwrap();
    call.audio(&fallback_ctx, 2000);
    call.tts_done(&fallback_ctx);
    call.advance(2100);
    // Next turn: the LLM errors outright → second failure in a row → goodbye and hang up.
    let turn = llm_turn(&call.says("Can you hear me?"));
    let actions = call.llm(turn, LlmEvent::Failed("http 500".to_owned()));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text.contains("technical trouble"))
    ));
    let goodbye_ctx = actions
        .iter()
        .find_map(|a| match a {
            Action::TtsOpen { context } => Some(context.clone()),
            _ => None,
        })
        .unwrap();
    call.audio(&goodbye_ctx, 1500);
    call.tts_done(&goodbye_ctx);
    let actions = call.advance(1600);
    assert!(
        has(&actions, |a| matches!(a, Action::HangUp)),
        "hang up after the goodbye played"
    );
    call.send(Event::StreamStopped);
    let outcome = call.engine.outcome().unwrap();
    assert_eq!(outcome.end_reason, EndReason::ProviderFailed(Provider::Llm));
    assert_eq!(outcome.failures.len(), 2);
    assert!(outcome.end_reason.error_message().is_some());
}

#[test]
fn an_empty_llm_reply_is_a_failure_too() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("Hi"));
    let actions = call.llm(turn, LlmEvent::Finished);
    assert!(has(&actions, |a| matches!(
        a,
        Action::Failure {
            kind: "empty_reply",
            ..
        }
    )));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text.starts_with("Sorry"))
    ));
}

#[test]
fn silence_cannot_carry_a_call_past_its_credits() {
    let mut plan = plan();
    plan.limits.credits_at_start = Some(2); // two minutes
    let mut call = Call::started(plan);
    call.greeting_played();
    // Nobody says anything; idle prompts are further out than the limit? No: make the caller
    // active with backchannel-free silence by moving in steps below the idle threshold.
    let mut warned_at = None;
    let mut goodbye_at = None;
    let mut t = 0;
    while t < 130_000 {
        let actions = call.advance(1000);
        t += 1000;
        if has(&actions, |a| {
            matches!(
                a,
                Action::Publish(LiveEvent::BudgetWarning {
                    limit: LimitKind::Credits,
                    ..
                })
            )
        }) {
            warned_at = Some(t);
        }
        if has(&actions, |a| {
            matches!(
                a,
                Action::Publish(LiveEvent::LimitReached {
                    limit: LimitKind::Credits,
                    ending: true,
                    ..
                })
            )
        }) {
            goodbye_at = Some(t);
            for action in &actions {
                if let Action::TtsOpen { context } = action {
                    let ctx = context.clone();
                    call.audio(&ctx, 2000);
                    call.tts_done(&ctx);
                }
            }
        }
        if has(&actions, |a| matches!(a, Action::HangUp)) {
            break;
        }
        // Keep the caller from being "idle": a word every 10 s.
        if t % 10_000 == 0 && goodbye_at.is_none() {
            let actions = call.says("Sure thing indeed.");
            let turn = llm_turn(&actions);
            call.llm(turn, LlmEvent::Delta("Great. ".to_owned()));
            call.llm(turn, LlmEvent::Finished);
            let ctx = format!("t{turn}");
            call.audio(&ctx, 500);
            call.tts_done(&ctx);
        }
    }
    let elapsed_at_start = 1600; // the greeting
    let warned = warned_at.expect("warned") + elapsed_at_start;
    assert!(
        (90_000..=92_000).contains(&warned),
        "warned at {warned} ms (75 % of 120 s)"
    );
    let goodbye = goodbye_at.expect("goodbye") + elapsed_at_start;
    assert!(
        (114_000..=116_000).contains(&goodbye),
        "goodbye at {goodbye} ms (limit − 6 s)"
    );
    assert!(has(&call.log, |a| matches!(a, Action::HangUp)));
    call.send(Event::StreamStopped);
    let outcome = call.engine.outcome().unwrap();
    assert!(
        outcome.duration_secs <= 120,
        "ended within the credits: {}",
        outcome.duration_secs
    );
    assert!(outcome.credits_used <= 2);
    assert_eq!(
        outcome.end_reason,
        EndReason::LimitReached(LimitKind::Credits)
    );
}

#[test]
fn stt_drop_buffers_and_replays_the_unfinished_utterance() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let frame = [0x10u8; 160];
    for _ in 0..10 {
        assert_eq!(call.engine.caller_audio(&frame), AudioRoute::Forward);
    }
    let actions = call.send(Event::SttLost {
        reason: "closed".to_owned(),
    });
    assert!(has(&actions, |a| matches!(
        a,
        Action::Failure {
            provider: Provider::Stt,
            ..
        }
    )));
    for _ in 0..5 {
        assert_eq!(call.engine.caller_audio(&frame), AudioRoute::Buffered);
    }
    call.send(Event::SttConnected);
    let replay = call.engine.audio_to_replay();
    assert_eq!(
        replay.len(),
        15 * 160,
        "the unfinished utterance and the gap, in order"
    );
    assert_eq!(call.engine.caller_audio(&frame), AudioRoute::Forward);
    // After a final result the replay buffer starts over.
    call.says("I said something.");
    call.send(Event::SttLost {
        reason: "closed".to_owned(),
    });
    call.send(Event::SttConnected);
    assert!(call.engine.audio_to_replay().is_empty());
}

#[test]
fn two_stt_failures_in_a_row_end_the_call() {
    let mut call = Call::started(plan());
    call.greeting_played();
    call.send(Event::SttLost {
        reason: "closed".to_owned(),
    });
    let actions = call.send(Event::SttLost {
        reason: "handshake refused".to_owned(),
    });
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text.contains("technical trouble"))
    ));
}

#[test]
fn tts_is_retried_once_then_the_call_ends() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("Tell me a story."));
    call.llm(
        turn,
        LlmEvent::Delta("Once upon a time there was a runner. ".to_owned()),
    );
    call.llm(turn, LlmEvent::Finished);
    let actions = call.send(Event::TtsLost {
        reason: "socket closed".to_owned(),
    });
    assert!(has(&actions, |a| matches!(
        a,
        Action::Failure {
            provider: Provider::Tts,
            ..
        }
    )));
    let actions = call.send(Event::TtsConnected);
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsOpen { context } if context == "t2r")
    ));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { context, text } if context == "t2r" && text.starts_with("Once upon"))
    ));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsFlush { context } if context == "t2r")
    ));
    let actions = call.send(Event::TtsLost {
        reason: "socket closed again".to_owned(),
    });
    assert!(has(&actions, |a| matches!(a, Action::HangUp)));
    call.send(Event::StreamStopped);
    assert_eq!(
        call.engine.outcome().unwrap().end_reason,
        EndReason::ProviderFailed(Provider::Tts)
    );
}

#[test]
fn tts_silence_is_a_failure_and_the_line_is_retried() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("Hi there"));
    call.llm(turn, LlmEvent::Delta("Hello again, my friend. ".to_owned()));
    call.llm(turn, LlmEvent::Finished);
    let actions = call.advance(5000);
    assert!(has(&actions, |a| matches!(
        a,
        Action::Failure {
            provider: Provider::Tts,
            kind: "timeout"
        }
    )));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { context, .. } if context == "t2r")
    ));
    let actions = call.audio("t2r", 500);
    assert!(played_ms(&actions) > 0);
}

#[test]
fn a_context_finished_without_audio_is_a_failure_not_a_line_said() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let turn = llm_turn(&call.says("Hi there"));
    call.llm(turn, LlmEvent::Delta("Hello again, my friend. ".to_owned()));
    call.llm(turn, LlmEvent::Finished);
    // The provider closes the context without a byte of audio.
    let actions = call.tts_done("t2");
    assert!(has(&actions, |a| matches!(
        a,
        Action::Failure {
            provider: Provider::Tts,
            kind: "no_audio"
        }
    )));
    assert!(
        has(
            &actions,
            |a| matches!(a, Action::TtsText { context, text } if context == "t2r" && text.starts_with("Hello again"))
        ),
        "the line is retried on a fresh context: {actions:?}"
    );
    assert!(
        !call
            .transcript()
            .iter()
            .any(|(role, text, _)| *role == Role::Assistant && text.starts_with("Hello again")),
        "nothing was heard yet, so nothing is in the transcript"
    );
    call.aligned_audio("t2r", 1000, 24);
    call.tts_done("t2r");
    call.advance(1200);
    assert!(
        call.transcript()
            .iter()
            .any(|(role, text, _)| *role == Role::Assistant && text == "Hello again, my friend."),
        "{:?}",
        call.transcript()
    );
    // A second silent finish in a row ends the call: nothing can be said any more.
    let turn = llm_turn(&call.says("And now?"));
    call.llm(turn, LlmEvent::Delta("Still here. ".to_owned()));
    call.llm(turn, LlmEvent::Finished);
    call.tts_done(&format!("t{turn}"));
    let actions = call.tts_done(&format!("t{turn}r"));
    assert!(
        has(&actions, |a| matches!(a, Action::HangUp)),
        "{actions:?}"
    );
    call.send(Event::StreamStopped);
    let outcome = call.engine.outcome().unwrap();
    assert_eq!(outcome.end_reason, EndReason::ProviderFailed(Provider::Tts));
    assert_eq!(
        outcome
            .failures
            .iter()
            .filter(|f| f.provider == Provider::Tts)
            .count(),
        3
    );
}

#[test]
fn voicemail_gets_the_message_after_the_beep_then_a_hang_up() {
    let mut call = Call::started(plan());
    call.audio("t1", 300);
    call.advance(200);
    let actions = call.send(Event::AnsweredBy(AnsweredBy::MachineReady));
    assert!(has(&actions, |a| matches!(a, Action::ClearAudio)));
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text.starts_with("Hi Ada, it's Brad"))
    ));
    // The caller (the machine) cannot interrupt the message.
    call.audio("t2", 2500);
    call.tts_done("t2");
    assert!(!has(
        &call.says("Please leave a message after the tone."),
        |a| matches!(a, Action::ClearAudio)
    ));
    let actions = call.advance(2600);
    assert!(has(&actions, |a| matches!(a, Action::HangUp)));
    call.send(Event::TelephonyEnded {
        status: CallStatus::Completed,
        duration_secs: Some(4),
    });
    let outcome = call.engine.outcome().unwrap();
    assert_eq!(outcome.status, CallStatus::Voicemail);
    assert_eq!(outcome.duration_secs, 4, "billed seconds win");
    assert!(
        outcome
            .transcript
            .iter()
            .any(|l| l.text.starts_with("Hi Ada, it's Brad"))
    );
}

#[test]
fn voicemail_hang_up_setting_hangs_up_at_once() {
    let mut plan = plan();
    plan.voicemail.action = VoicemailAction::HangUp;
    let mut call = Call::started(plan);
    let actions = call.send(Event::AnsweredBy(AnsweredBy::MachineReady));
    assert!(has(&actions, |a| matches!(a, Action::HangUp)));
    assert!(!has(&actions, |a| matches!(a, Action::TtsText { .. })));
}

#[test]
fn calls_that_never_connect_cost_nothing() {
    for status in [
        CallStatus::Busy,
        CallStatus::NoAnswer,
        CallStatus::Failed,
        CallStatus::Canceled,
    ] {
        let mut call = Call::new(plan());
        let actions = call.send(Event::TelephonyEnded {
            status,
            duration_secs: Some(0),
        });
        assert!(has(&actions, |a| matches!(a, Action::Finished)));
        let outcome = call.engine.outcome().unwrap();
        assert_eq!(outcome.status, status);
        assert_eq!(outcome.duration_secs, 0);
        assert_eq!(outcome.credits_used, 0);
        assert_eq!(outcome.cost.total.micro_cents(), 0);
        assert_eq!(outcome.end_reason, EndReason::NotAnswered);
    }
}

#[test]
fn finishing_twice_records_once() {
    let mut call = Call::started(plan());
    call.greeting_played();
    call.now += 60_000;
    let first = call.send(Event::StreamStopped);
    assert!(has(&first, |a| matches!(a, Action::Finished)));
    let second = call.send(Event::TelephonyEnded {
        status: CallStatus::Completed,
        duration_secs: Some(99),
    });
    assert!(second.is_empty());
    assert_eq!(call.engine.outcome().unwrap().duration_secs, 62);
}

#[test]
fn credits_used_are_started_minutes_capped_by_the_credits_at_start() {
    let mut plan = plan();
    plan.limits.credits_at_start = Some(3);
    let mut call = Call::started(plan);
    call.now += 61_000;
    call.send(Event::StreamStopped);
    assert_eq!(call.engine.outcome().unwrap().credits_used, 2);

    let mut plan = self::plan();
    plan.limits.credits_at_start = Some(1);
    let mut call = Call::started(plan);
    call.send(Event::TelephonyEnded {
        status: CallStatus::Completed,
        duration_secs: Some(150),
    });
    assert_eq!(
        call.engine.outcome().unwrap().credits_used,
        1,
        "never more than the user had"
    );
}

#[test]
fn idle_callers_are_asked_then_let_go() {
    let mut call = Call::started(plan());
    call.greeting_played();
    let actions = call.advance(20_000);
    let ctx = actions
        .iter()
        .find_map(|a| match a {
            Action::TtsText { context, text } if text.starts_with("Are you still there") => {
                Some(context.clone())
            }
            _ => None,
        })
        .expect("idle prompt");
    call.audio(&ctx, 1000);
    call.tts_done(&ctx);
    let actions = call.advance(16_100);
    assert!(has(
        &actions,
        |a| matches!(a, Action::TtsText { text, .. } if text.contains("stepped away"))
    ));
}

#[test]
fn the_user_can_hang_up_through_the_api() {
    let mut call = Call::started(plan());
    call.audio("t1", 2000);
    call.advance(500);
    let actions = call.send(Event::HangUpRequested);
    assert!(has(&actions, |a| matches!(a, Action::ClearAudio)));
    assert!(has(&actions, |a| matches!(a, Action::HangUp)));
    call.send(Event::StreamStopped);
    assert_eq!(
        call.engine.outcome().unwrap().end_reason,
        EndReason::HangUpRequested
    );
}

#[test]
fn budget_warning_is_spoken_as_a_wrap_up_line() {
    let mut plan = plan();
    plan.limits.per_call_budget_cents = 2; // 2 ¢: ~92 s of telephony + STT
    let mut call = Call::started(plan);
    call.greeting_played();
    let mut saw_warning = false;
    let mut saw_wrap_up = false;
    for _ in 0..40 {
        let actions = call.advance(5000);
        for _ in 0..250 {
            call.engine.caller_audio(&[0x10; 160]);
        }
        saw_warning |= has(&actions, |a| {
            matches!(
                a,
                Action::Publish(LiveEvent::BudgetWarning {
                    limit: LimitKind::PerCallBudget,
                    ..
                })
            )
        });
        if let Some(ctx) = actions.iter().find_map(|a| match a {
            Action::TtsText { context, text } if text.contains("little time left") => {
                Some(context.clone())
            }
            _ => None,
        }) {
            saw_wrap_up = true;
            call.audio(&ctx, 1000);
            call.tts_done(&ctx);
        }
        if has(&actions, |a| {
            matches!(a, Action::Publish(LiveEvent::LimitReached { .. }))
        }) {
            break;
        }
        // stay non-idle
        call.send(Event::Stt(SttEvent::SpeechStarted));
    }
    assert!(
        saw_warning,
        "no warning: {:?}",
        call.log
            .iter()
            .filter(|a| matches!(a, Action::Publish(_)))
            .collect::<Vec<_>>()
    );
    assert!(saw_wrap_up);
}

#[test]
fn a_warning_at_the_end_of_the_callers_turn_is_said_after_the_reply_not_lost() {
    let mut plan = plan();
    plan.limits.max_duration_secs = 100; // warned at 75 s
    let mut call = Call::started(plan);
    call.greeting_played();
    // 76 s in with no tick on the way: the caller's turn ending is the first check to see it.
    call.now += 76_000;
    let actions = call.says("Tell me more.");
    assert!(has(&actions, |a| matches!(
        a,
        Action::Publish(LiveEvent::BudgetWarning {
            limit: LimitKind::MaxDuration,
            ..
        })
    )));
    let wrap_up = |actions: &[Action]| {
        has(
            actions,
            |a| matches!(a, Action::TtsText { text, .. } if text.contains("little time left")),
        )
    };
    assert!(!wrap_up(&actions), "the reply comes first: {actions:?}");
    let turn = llm_turn(&actions);
    call.llm(turn, LlmEvent::Delta("Sure thing. ".to_owned()));
    call.llm(turn, LlmEvent::Finished);
    call.audio(&format!("t{turn}"), 800);
    let mut after = call.tts_done(&format!("t{turn}"));
    after.extend(call.advance(1000));
    assert!(wrap_up(&after), "then the wrap-up: {after:?}");
    assert!(
        call.transcript()
            .iter()
            .any(|(role, text, _)| *role == Role::Assistant && text == "Sure thing."),
        "{:?}",
        call.transcript()
    );
}

#[test]
fn limits_are_checked_at_least_every_30_seconds_in_silence() {
    let mut plan = plan();
    // The greeting's 19 characters cost 0.285 ¢; telephony 1.3 ¢/min. 75 % of 2 ¢ = 1.5 ¢ is
    // reached ~56 s after the answer, between the periodic checks at ~30 s and ~60 s.
    plan.limits.per_call_budget_cents = 2;
    let mut call = Call::started(plan);
    call.greeting_played();
    let mut warned_at = None;
    for second in 1..=80u64 {
        let actions = call.advance(1000);
        if warned_at.is_none()
            && has(&actions, |a| {
                matches!(a, Action::Publish(LiveEvent::BudgetWarning { .. }))
            })
        {
            warned_at = Some(second);
        }
        call.send(Event::Stt(SttEvent::SpeechStarted));
    }
    let warned_at = warned_at.expect("warned");
    assert!((55..=62).contains(&warned_at), "warned at {warned_at} s");
}

#[test]
fn the_summary_is_metered_and_numbered_after_the_last_event() {
    let mut call = Call::started(plan());
    call.greeting_played();
    call.now += 30_000;
    call.send(Event::StreamStopped);
    let mut outcome = call.engine.outcome().unwrap().clone();
    let last_seq = outcome.cost_events.iter().map(|e| e.seq).max().unwrap();
    let before = outcome.cost.total;
    outcome.add_summary(
        "Ada trains for a 10k.".to_owned(),
        300,
        20,
        &RATES_2025,
        call.now,
    );
    assert_eq!(outcome.usage.llm_input_tokens, 300);
    assert!(outcome.cost.total > before);
    let seqs: Vec<u32> = outcome.cost_events.iter().map(|e| e.seq).collect();
    assert_eq!(&seqs[seqs.len() - 2..], &[last_seq + 1, last_seq + 2]);
    assert_eq!(outcome.summary.as_deref(), Some("Ada trains for a 10k."));
}

#[test]
fn a_time_limit_is_acted_on_when_its_timer_fires_late() {
    let mut plan = plan();
    plan.limits.max_duration_secs = 28; // warned at 21 s (before the idle prompt), goodbye at 22 s
    let mut call = Call::started(plan);
    call.greeting_played();
    let wake = call
        .log
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::WakeAt(at) => Some(*at),
            _ => None,
        })
        .expect("a wake-up");
    assert_eq!(wake, START + 21_000, "woken for the warning");
    // The runtime's timer fires a few milliseconds late, as real timers do.
    call.now = wake + 3;
    let actions = call.send(Event::Tick);
    assert!(
        has(&actions, |a| matches!(
            a,
            Action::Publish(LiveEvent::BudgetWarning {
                limit: LimitKind::MaxDuration,
                percent_used: 75,
                ..
            })
        )),
        "{actions:?}"
    );
    assert!(has(&actions, |a| matches!(
        a,
        Action::TtsText { text, .. } if text.contains("little time left")
    )));
}
