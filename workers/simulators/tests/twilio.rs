//! The Twilio simulator against a fake application: REST, signed webhooks, progress, AMD,
//! TwiML, and the phone side of Media Streams.

mod common;

use std::time::Duration;

use callmeback_simulators::twilio::records::{CallStatus, EndReason};
use common::*;
use serde_json::{Value, json};

const TO: &str = "+14155550100";
const FROM: &str = "+14155550199";

async fn dial(
    sims: &callmeback_simulators::Simulators,
    app: &FakeApp,
    extra: &[(&str, &str)],
) -> String {
    let twiml_url = format!("{}/twiml", app.base);
    let status_url = format!("{}/status", app.base);
    let mut params: Vec<(&str, &str)> = vec![
        ("To", TO),
        ("From", FROM),
        ("Url", &twiml_url),
        ("StatusCallback", &status_url),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "answered"),
        ("StatusCallbackEvent", "completed"),
    ];
    params.extend_from_slice(extra);
    let (status, body) = create_call(sims, &params).await;
    assert_eq!(status, 201, "{body}");
    body["sid"].as_str().expect("sid").to_owned()
}

#[tokio::test]
async fn rest_api_authenticates_and_validates_like_twilio() {
    let sims = start_sims().await;
    let client = reqwest::Client::new();
    let form = "To=%2B14155550100&From=%2B14155550199&Url=http%3A%2F%2Fx.test%2Ft";
    for auth in [
        None,
        Some(format!(
            "Basic {}",
            base64_of("AC11111111111111111111111111111111:wrong")
        )),
    ] {
        let mut request = client
            .post(calls_url(&sims))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("answers");
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            body,
            json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401})
        );
    }
    let (status, body) = create_call(
        &sims,
        &[
            ("To", "4155550100"),
            ("From", FROM),
            ("Url", "http://x.test/t"),
        ],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21211)));
    let (status, body) = create_call(
        &sims,
        &[("To", TO), ("From", "bad"), ("Url", "http://x.test/t")],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21212)));
    let (status, body) = create_call(&sims, &[("To", TO), ("From", FROM)]).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21205)));
    assert_eq!(
        body["more_info"],
        "https://www.twilio.com/docs/errors/21205"
    );

    let missing = client
        .get(call_url(&sims, "CA00000000000000000000000000000000"))
        .header("authorization", basic_auth())
        .send()
        .await
        .expect("answers");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["code"], 20404);

    // A scenario can make the POST itself fail (e.g. geo permissions).
    sims.twilio().set_scenario(
        TO,
        scenario(
            json!({"rest_error": {"status": 400, "code": 21215, "message": "Geo permissions"}}),
        ),
    );
    let (status, body) = create_call(
        &sims,
        &[("To", TO), ("From", FROM), ("Url", "http://x.test/t")],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21215)));
    assert!(sims.twilio().calls().is_empty());
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn answered_call_runs_the_script_with_signed_webhooks_in_order() {
    let sims = start_sims().await;
    let app = start_app().await;
    sims.twilio().set_scenario(
        TO,
        scenario(json!({
            "script": [{"say": "Hi there, nice to hear you.", "pause_ms": 300}, {"say": "Goodbye now.", "pause_ms": 300}],
            "hangup": {"caller": {"after_ms": 300}},
        })),
    );
    let (status, created) = create_call(
        &sims,
        &[
            ("To", TO),
            ("From", FROM),
            ("Url", &format!("{}/twiml", app.base)),
            ("StatusCallback", &format!("{}/status", app.base)),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"),
            ("StatusCallbackEvent", "completed"),
        ],
    )
    .await;
    assert_eq!(status, 201);
    let sid = created["sid"].as_str().expect("sid").to_owned();
    assert!(
        sid.starts_with("CA")
            && sid.len() == 34
            && sid[2..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(created["status"], "queued");
    assert_eq!(created["direction"], "outbound-api");
    assert_eq!(created["api_version"], "2010-04-01");
    assert_eq!(created["start_time"], Value::Null);
    assert!(
        chrono::DateTime::parse_from_rfc2822(created["date_created"].as_str().expect("date"))
            .is_ok()
    );

    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(20))
        .await
        .expect("call ends");
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.end_reason, Some(EndReason::CallerHangup));

    // Webhooks: signed, form-encoded, in order.
    let statuses = app.requests_to("/status");
    let seen: Vec<_> = statuses
        .iter()
        .map(|r| r.param("CallStatus").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen, vec!["queued", "ringing", "in-progress", "completed"]);
    let sequence: Vec<_> = statuses
        .iter()
        .map(|r| r.param("SequenceNumber").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sequence, vec!["0", "1", "2", "3"]);
    for r in app.log().requests.iter() {
        assert!(
            r.signature_valid,
            "unsigned or badly signed webhook to {}: {:?}",
            r.path, r.signature
        );
    }
    let last = statuses.last().expect("completed callback");
    assert_eq!(last.param("CallbackSource"), Some("call-progress-events"));
    assert_eq!(last.param("Direction"), Some("outbound-api"));
    let duration: u64 = last
        .param("CallDuration")
        .expect("CallDuration")
        .parse()
        .expect("integer");
    assert!(duration >= 1);
    assert_eq!(last.param("Duration"), Some("1"));
    assert!(
        chrono::DateTime::parse_from_rfc2822(last.param("Timestamp").expect("Timestamp")).is_ok()
    );
    let twiml = &app.requests_to("/twiml")[0];
    assert_eq!(twiml.param("CallStatus"), Some("in-progress"));
    assert_eq!(twiml.param("AnsweredBy"), None);
    assert_eq!(twiml.param("Called"), Some(TO));
    assert_eq!(
        record
            .webhooks_of("status_callback")
            .map(|w| w.status)
            .collect::<Vec<_>>(),
        vec![Some(204); 4]
    );

    // The stream: signed handshake, connected, start, 20 ms media, stop.
    let handshakes = app.log().stream_handshakes.clone();
    assert_eq!(handshakes.len(), 1);
    assert!(
        handshakes[0].1,
        "stream handshake signature invalid: {:?}",
        handshakes[0].0
    );
    let messages = app.log().stream_messages.clone();
    assert_eq!(
        messages[0],
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let start = &messages[1];
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    assert_eq!(start["start"]["callSid"], sid.as_str());
    assert_eq!(start["start"]["accountSid"], ACCOUNT);
    assert_eq!(start["start"]["tracks"], json!(["inbound"]));
    assert_eq!(
        start["start"]["customParameters"],
        json!({"callId": "call-1", "persona": "brad"})
    );
    assert_eq!(
        start["start"]["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    let stream_sid = start["streamSid"].as_str().expect("streamSid");
    assert!(stream_sid.starts_with("MZ") && stream_sid.len() == 34);
    let media: Vec<&Value> = messages.iter().filter(|m| m["event"] == "media").collect();
    assert!(media.len() > 50, "only {} media frames", media.len());
    for (i, m) in media.iter().enumerate() {
        assert_eq!(m["media"]["chunk"], (i + 1).to_string());
        assert_eq!(m["media"]["timestamp"], (i * 20).to_string());
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["streamSid"], stream_sid);
        let payload = base64_decode(m["media"]["payload"].as_str().expect("payload"));
        assert_eq!(payload.len(), 160);
    }
    let sequence_numbers: Vec<u64> = messages[1..]
        .iter()
        .map(|m| {
            m["sequenceNumber"]
                .as_str()
                .expect("sequenceNumber")
                .parse()
                .expect("number")
        })
        .collect();
    assert!(
        sequence_numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers not consecutive"
    );
    let stop = messages.last().expect("stop");
    assert_eq!(stop["event"], "stop");
    assert_eq!(stop["stop"], json!({"accountSid": ACCOUNT, "callSid": sid}));

    // Real time: the stream lasted about as long as its frames say.
    let stream = record.stream.clone().expect("stream record");
    let wall_ms =
        (stream.stop_sent_at.expect("stop") - stream.start_sent_at.expect("start")) / 1000;
    let media_ms = media.len() as u64 * 20;
    assert!(
        wall_ms.abs_diff(media_ms) < 200,
        "wall {wall_ms} ms vs media {media_ms} ms"
    );

    // What the caller said reached the app; what the persona said reached the caller.
    assert_eq!(
        app.log().heard_lines,
        vec!["Hi there, nice to hear you.", "Goodbye now."]
    );
    assert_eq!(stream.lines.len(), 2);
    assert!(
        stream
            .lines
            .iter()
            .all(|l| l.ended_at.is_some() && !l.forced_by_max_wait)
    );
    assert_eq!(stream.replies.len(), 3, "{:#?}", stream.replies);
    assert_eq!(stream.replies[0].after_line, None);
    assert_eq!(stream.replies[1].after_line, Some(0));
    let heard: Vec<String> = stream
        .replies
        .iter()
        .map(|r| r.segments[0].heard_text.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        heard,
        vec![
            "Hello, this is Brad calling you back.",
            "You said: Hi there, nice to hear you.",
            "You said: Goodbye now."
        ]
    );
    assert!(
        stream
            .replies
            .iter()
            .all(|r| !r.cut_by_clear && r.gaps_ms.is_empty())
    );
    // Marks are echoed after their audio played, in order.
    let marks: Vec<String> = stream.marks_echoed.iter().map(|m| m.name.clone()).collect();
    assert_eq!(marks, vec!["reply-0", "reply-1", "reply-2"]);
    assert!(stream.marks_echoed.iter().all(|m| !m.cleared));
    assert_eq!(app.stream_events("mark").len(), 3);
    assert!(stream.violations.is_empty());
    // The caller waited for the greeting before speaking.
    let greeting_played = stream.replies[0].segments[0]
        .play_started_at
        .expect("played");
    assert!(stream.lines[0].started_at > greeting_played + 500_000);

    // Timings: per line, speech end and the reply's first frame.
    let timings = sims.timings();
    let call = timings
        .calls
        .iter()
        .find(|c| c.call_sid == sid)
        .expect("call timings");
    assert_eq!(call.segments.len(), 2);
    for segment in &call.segments {
        assert!(
            segment.speech_end_at.is_some() && segment.reply_first_frame_at.is_some(),
            "{segment:?}"
        );
        assert!(segment.speech_end_to_reply_us.expect("derived") >= 0);
    }
    // The stream status callback went out too.
    let stream_status: Vec<_> = app
        .requests_to("/stream-status")
        .iter()
        .map(|r| r.param("StreamEvent").unwrap_or_default().to_owned())
        .collect();
    assert!(stream_status.contains(&"stream-started".to_owned()));

    // A call that already ended answers its JSON unchanged.
    let response = reqwest::Client::new()
        .post(call_url(&sims, &sid))
        .header("authorization", basic_auth())
        .form(&[("Status", "completed")])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["duration"], duration.to_string());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64")
}

#[tokio::test]
async fn barge_in_and_clear_cut_the_reply_and_echo_pending_marks() {
    let sims = start_sims().await;
    let app = start_app().await;
    {
        let mut persona = app.persona.lock().expect("lock");
        persona.greeting = Some("Let me tell you a very long story about my week, it started on Monday morning when I woke up early and went for a run in the park.".to_owned());
        persona.ms_per_char = 40;
        persona.clear_on_speech = true;
        persona.reply = false;
    }
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"script": [{"say": "Sorry to interrupt!", "barge_in_after_ms": 800}], "hangup": {"caller": {"after_ms": 200}}})),
    );
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(20))
        .await
        .expect("ends");
    let stream = record.stream.expect("stream");
    assert_eq!(stream.clears.len(), 1);
    assert!(stream.lines[0].barge_in);
    let reply = &stream.replies[0];
    assert!(reply.cut_by_clear, "{:#?}", stream.replies);
    let segment = &reply.segments[0];
    assert!(
        segment.cut_by_clear,
        "{:#?} clears {:?} lines {:?}",
        stream.replies, stream.clears, stream.lines
    );
    let heard_ms = segment.heard_ms.expect("heard");
    // Barge-in at 800 ms; the line header is decodable within ~2 frames.
    assert!((800..1700).contains(&heard_ms), "heard {heard_ms} ms");
    let heard = segment.heard_text.clone().expect("text");
    assert!(heard.starts_with("Let me"), "{heard}");
    assert!(heard.len() < segment.text.as_ref().expect("text").len());
    // The mark after the cleared audio is echoed at once, flagged as cleared.
    assert_eq!(stream.marks_echoed.len(), 1);
    assert!(stream.marks_echoed[0].cleared);
    assert!(stream.marks_echoed[0].at >= stream.clears[0]);
}

#[tokio::test]
async fn protocol_violations_are_recorded_with_twilio_codes() {
    let sims = start_sims().await;
    let app = start_app().await;
    app.persona.lock().expect("lock").violations = true;
    sims.twilio()
        .set_scenario(TO, scenario(json!({"script": [{"say": "Hello.", "pause_ms": 200}], "hangup": {"caller": {"after_ms": 100}}})));
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(20))
        .await
        .expect("ends");
    let stream = record.stream.expect("stream");
    let codes: Vec<u32> = stream.violations.iter().map(|v| v.code).collect();
    assert_eq!(
        codes,
        vec![31950, 31924, 31951, 31951, 31951, 31951],
        "{:#?}",
        stream.violations
    );
    assert_eq!(stream.messages_received.get("binary"), Some(&1));
    // The valid traffic still worked.
    assert!(stream.replies.len() >= 2);
}

#[tokio::test]
async fn slow_audio_shows_as_playback_gaps() {
    let sims = start_sims().await;
    let app = start_app().await;
    {
        let mut persona = app.persona.lock().expect("lock");
        persona.frames_per_tick = 1;
        persona.ticks_per_frame = 2; // half real time
        persona.reply = false;
        persona.greeting = Some("Twenty characters!!".to_owned());
    }
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"script": [{"say": "Ok.", "pause_ms": 200}], "hangup": {"caller": {"after_ms": 100}}})),
    );
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(20))
        .await
        .expect("ends");
    let stream = record.stream.expect("stream");
    let gaps = &stream.replies[0].gaps_ms;
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(
        stream.max_gap_ms >= 15 && stream.max_gap_ms <= 250,
        "max gap {}",
        stream.max_gap_ms
    );
    assert_eq!(
        stream.replies[0].segments[0].heard_text.as_deref(),
        Some("Twenty characters!!")
    );
}

#[tokio::test]
async fn busy_no_answer_failed_and_cancel() {
    let sims = start_sims().await;
    let app = start_app().await;
    for (to, outcome, status) in [
        ("+14155550101", "busy", "busy"),
        ("+14155550102", "no_answer", "no-answer"),
        ("+14155550103", "failed", "failed"),
    ] {
        sims.twilio()
            .set_scenario(to, scenario(json!({"outcome": outcome})));
        let (code, body) = create_call(
            &sims,
            &[
                ("To", to),
                ("From", FROM),
                ("Url", &format!("{}/twiml", app.base)),
                ("StatusCallback", &format!("{}/status", app.base)),
            ],
        )
        .await;
        assert_eq!(code, 201);
        let sid = body["sid"].as_str().expect("sid");
        let record = sims
            .twilio()
            .wait_for_end(sid, Duration::from_secs(10))
            .await
            .expect("ends");
        assert_eq!(record.status.as_str(), status);
        // Only the completed event was asked for (it is always sent).
        assert_eq!(record.callback_statuses(), vec![status.to_owned()]);
        let last = record
            .webhooks_of("status_callback")
            .last()
            .expect("callback")
            .clone();
        assert!(
            last.params
                .contains(&("CallDuration".to_owned(), "0".to_owned()))
        );
        assert!(record.webhooks_of("twiml").next().is_none());
    }
    // No answer within Timeout beats a long ring.
    sims.twilio()
        .set_scenario("+14155550104", scenario(json!({"ring_ms": 60_000})));
    let (_, body) = create_call(
        &sims,
        &[
            ("To", "+14155550104"),
            ("From", FROM),
            ("Url", &format!("{}/twiml", app.base)),
            ("Timeout", "1"),
        ],
    )
    .await;
    let record = sims
        .twilio()
        .wait_for_end(body["sid"].as_str().expect("sid"), Duration::from_secs(5))
        .await
        .expect("ends after Timeout");
    assert_eq!(record.status, CallStatus::NoAnswer);

    // Cancel while ringing.
    sims.twilio()
        .set_scenario("+14155550105", scenario(json!({"ring_ms": 5000})));
    let (_, body) = create_call(
        &sims,
        &[
            ("To", "+14155550105"),
            ("From", FROM),
            ("Url", &format!("{}/twiml", app.base)),
            ("StatusCallback", &format!("{}/status", app.base)),
        ],
    )
    .await;
    let sid = body["sid"].as_str().expect("sid").to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = reqwest::Client::new()
        .post(call_url(&sims, &sid))
        .header("authorization", basic_auth())
        .form(&[("Status", "canceled")])
        .send()
        .await
        .expect("answers");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "canceled");
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.end_reason, Some(EndReason::Canceled));
    assert_eq!(record.callback_statuses(), vec!["canceled".to_owned()]);
}

#[tokio::test]
async fn app_hangup_stops_the_stream_and_reports_the_duration() {
    let sims = start_sims().await;
    let app = start_app().await;
    sims.twilio()
        .set_scenario(TO, scenario(json!({"script": [], "hangup": "app"})));
    let sid = dial(&sims, &app, &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = reqwest::Client::new()
        .post(call_url(&sims, &sid))
        .header("authorization", basic_auth())
        .form(&[("Status", "completed")])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "completed");
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.end_reason, Some(EndReason::AppHangup));
    assert_eq!(app.stream_events("stop").len(), 1);
    let last = record
        .webhooks_of("status_callback")
        .last()
        .expect("completed")
        .clone();
    assert!(
        last.params
            .contains(&("CallStatus".to_owned(), "completed".to_owned()))
    );
    assert!(
        last.params
            .contains(&("CallDuration".to_owned(), "2".to_owned())),
        "{:?}",
        last.params
    );
}

#[tokio::test]
async fn app_closing_the_stream_ends_the_twiml_and_time_limit_ends_calls() {
    let sims = start_sims().await;
    let app = start_app().await;
    app.persona.lock().expect("lock").close_after_ms = Some(300);
    sims.twilio()
        .set_scenario(TO, scenario(json!({"hangup": "app"})));
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.end_reason, Some(EndReason::TwimlEnd));
    assert_eq!(
        record.stream.expect("stream").closed_by.as_deref(),
        Some("app")
    );
    assert!(app.stream_events("stop").is_empty());

    let app = start_app().await;
    sims.twilio()
        .set_scenario(TO, scenario(json!({"hangup": "app"})));
    let sid = dial(&sims, &app, &[("TimeLimit", "1")]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.end_reason, Some(EndReason::TimeLimit));
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(app.stream_events("stop").len(), 1);
}

#[tokio::test]
async fn duplicate_and_reordered_callbacks() {
    let sims = start_sims().await;
    let app = start_app().await;
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"duplicate_callbacks": true, "script": [{"say": "Bye.", "pause_ms": 100}], "hangup": {"caller": {"after_ms": 100}}})),
    );
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(10))
        .await
        .expect("ends");
    assert_eq!(
        record.callback_statuses(),
        vec![
            "queued",
            "queued",
            "ringing",
            "ringing",
            "in-progress",
            "in-progress",
            "completed",
            "completed"
        ]
    );

    let app = start_app().await;
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"reverse_late_callbacks": true, "script": [{"say": "Bye.", "pause_ms": 100}], "hangup": {"caller": {"after_ms": 100}}})),
    );
    let sid = dial(&sims, &app, &[]).await;
    sims.twilio()
        .wait_for_end(&sid, Duration::from_secs(10))
        .await
        .expect("ends");
    let statuses = app.requests_to("/status");
    let seen: Vec<_> = statuses
        .iter()
        .map(|r| {
            (
                r.param("CallStatus").unwrap_or_default().to_owned(),
                r.param("SequenceNumber").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("queued".to_owned(), "0".to_owned()),
            ("in-progress".to_owned(), "2".to_owned()),
            ("ringing".to_owned(), "1".to_owned()),
            ("completed".to_owned(), "3".to_owned()),
        ]
    );
}

#[tokio::test]
async fn answering_machine_detection_async_and_sync() {
    let sims = start_sims().await;
    let app = start_app().await;
    app.persona.lock().expect("lock").greeting = None;
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"outcome": "machine", "machine_greeting_ms": 1500, "hangup": "app"})),
    );
    let amd_url = format!("{}/amd", app.base);
    let sid = dial(
        &sims,
        &app,
        &[
            ("MachineDetection", "DetectMessageEnd"),
            ("AsyncAmd", "true"),
            ("AsyncAmdStatusCallback", &amd_url),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let amd = app.requests_to("/amd");
    assert_eq!(
        amd.len(),
        1,
        "exactly one AMD callback (no machine_start with DetectMessageEnd)"
    );
    assert_eq!(amd[0].param("AnsweredBy"), Some("machine_end_beep"));
    assert_eq!(amd[0].param("CallSid"), Some(sid.as_str()));
    assert!(amd[0].param("MachineDetectionDuration").is_some());
    assert!(amd[0].signature_valid);
    // The voicemail greeting came through the stream as speech.
    assert_eq!(
        app.log().heard_lines.first().map(String::as_str),
        Some(
            "Hi, you have reached the voicemail of this number. Please leave a message after the tone."
        )
    );
    // Async AMD: no AnsweredBy on the TwiML fetch.
    assert_eq!(app.requests_to("/twiml")[0].param("AnsweredBy"), None);
    let _ = reqwest::Client::new()
        .post(call_url(&sims, &sid))
        .header("authorization", basic_auth())
        .form(&[("Status", "completed")])
        .send()
        .await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.answered_by.as_deref(), Some("machine_end_beep"));

    // Human, synchronous: AnsweredBy rides on the TwiML fetch.
    let app = start_app().await;
    sims.twilio().set_scenario(TO, scenario(json!({"script": [{"say": "Yes?", "pause_ms": 100}], "hangup": {"caller": {"after_ms": 100}}})));
    let sid = dial(&sims, &app, &[("MachineDetection", "Enable")]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(10))
        .await
        .expect("ends");
    assert_eq!(
        app.requests_to("/twiml")[0].param("AnsweredBy"),
        Some("human")
    );
    assert_eq!(record.amd.expect("amd").mode, "sync");
}

#[tokio::test]
async fn twiml_errors_fail_the_call() {
    let sims = start_sims().await;
    let app = start_app().await;
    app.set_twiml(
        r#"<Response><Connect><Stream url="ws://127.0.0.1:1/media?call=1"/></Connect></Response>"#,
    );
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.status, CallStatus::Failed);
    assert_eq!(record.end_reason, Some(EndReason::TwimlError));
    assert_eq!(record.errors[0].code, 31920);

    *app.twiml_status.lock().expect("lock") = 500;
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.status, CallStatus::Failed);
    assert_eq!(record.errors[0].code, 11200);

    *app.twiml_status.lock().expect("lock") = 200;
    app.set_twiml("<Response><Say>Hi</Say><Dial>+1</Dial><Hangup/><Say>never</Say></Response>");
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.end_reason, Some(EndReason::TwimlHangup));
    assert_eq!(record.said, vec!["Hi"]);
    assert_eq!(record.unsupported_verbs, vec!["Dial"]);

    app.set_twiml("<Response><Say>unclosed</Response>");
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(5))
        .await
        .expect("ends");
    assert_eq!(record.errors[0].code, 12100);
}

#[tokio::test]
async fn persona_that_never_answers_makes_the_caller_speak_anyway() {
    let sims = start_sims().await;
    let app = start_app().await;
    {
        let mut persona = app.persona.lock().expect("lock");
        persona.greeting = None;
        persona.reply = false;
    }
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"max_wait_ms": 500, "script": [{"say": "Hello? Anyone?", "dtmf": "5"}], "hangup": {"caller": {"after_ms": 100}}})),
    );
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(10))
        .await
        .expect("ends");
    let stream = record.stream.expect("stream");
    assert!(stream.lines[0].forced_by_max_wait);
    assert_eq!(stream.dtmf_sent, vec!["5"]);
    let dtmf = app.stream_events("dtmf");
    assert_eq!(dtmf.len(), 1);
    assert_eq!(
        dtmf[0]["dtmf"],
        json!({"track": "inbound_track", "digit": "5"})
    );
    assert_eq!(app.log().heard_lines, vec!["Hello? Anyone?"]);
}

#[tokio::test]
async fn silence_from_the_app_is_not_the_persona_talking() {
    let sims = start_sims().await;
    let app = start_app().await;
    app.persona.lock().expect("lock").silence_when_idle = true;
    sims.twilio().set_scenario(
        TO,
        scenario(json!({"max_wait_ms": 10_000, "script": [{"say": "One.", "pause_ms": 300}, {"say": "Two.", "pause_ms": 300}], "hangup": {"caller": {"after_ms": 300}}})),
    );
    let sid = dial(&sims, &app, &[]).await;
    let record = sims
        .twilio()
        .wait_for_end(&sid, Duration::from_secs(10))
        .await
        .expect("ends");
    let stream = record.stream.expect("stream");
    assert_eq!(record.end_reason, Some(EndReason::CallerHangup));
    assert!(
        stream.lines.iter().all(|l| !l.forced_by_max_wait),
        "{:?}",
        stream.lines
    );
    // Each line came about pause_ms after the previous reply finished playing.
    let reply_end = |i: usize| {
        let segment = &stream.replies[i].segments[0];
        segment.play_started_at.expect("played") + segment.heard_ms.expect("heard") * 1000
    };
    for (i, line) in stream.lines.iter().enumerate() {
        let waited_ms = (line.started_at - reply_end(i)) / 1000;
        assert!(
            (290..700).contains(&waited_ms),
            "line {i} waited {waited_ms} ms"
        );
    }
}
