//! Protocol-faithful local stand-ins for the paid providers a call uses: Twilio (REST, signed
//! webhooks, the phone side of Media Streams), Deepgram streaming STT, an OpenAI-compatible
//! streaming LLM and ElevenLabs stream-input TTS.
//!
//! All of them are served on one listener, routed by the providers' real paths, so the Worker
//! under test only swaps base URLs. Simulated speech carries its text inside the μ-law audio
//! ([`codec`]), so every simulator can tell exactly what was said and heard. A control API under
//! `/sim/...` (see [`control`]) and the library handles ([`Simulators::twilio`], …) set scenarios
//! and read records; [`Simulators::timings`] gives the per-line instants the latency benchmark
//! needs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), callmeback_simulators::SimError> {
//! use callmeback_simulators::{SimConfig, Simulators};
//! let sims = Simulators::start(SimConfig::default()).await?;
//! println!("point the Worker at {}", sims.base_url());
//! # Ok(()) }
//! ```

pub mod clock;
pub mod codec;
pub mod control;
pub mod llm;
pub mod stt;
mod sync;
mod tasks;
pub mod timings;
pub mod tts;
pub mod twilio;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::tasks::Tasks;
use crate::timings::{Timings, TimingsReport};

pub use llm::{LlmConfig, LlmHandle};
pub use stt::{SttConfig, SttHandle};
pub use tts::{TtsConfig, TtsHandle};
pub use twilio::{Scenario, TwilioConfig, TwilioHandle};

/// Everything configurable at start (the knobs can also be changed later, see the handles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port. Local only by default: the control API has no auth.
    pub bind: SocketAddr,
    pub twilio: TwilioConfig,
    pub stt: SttConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            twilio: TwilioConfig::default(),
            stt: SttConfig::default(),
            llm: LlmConfig::default(),
            tts: TtsConfig::default(),
        }
    }
}

/// Why the simulators could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl SimError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SimError::Bind { .. } => "bind_failed",
        }
    }
}

/// What every route handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) twilio: Arc<twilio::TwilioState>,
    pub(crate) stt: Arc<stt::SttState>,
    pub(crate) llm: Arc<llm::LlmState>,
    pub(crate) tts: Arc<tts::TtsState>,
    pub(crate) timings: Arc<Timings>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub(crate) fn reset(&self) {
        self.twilio.reset();
        self.stt.reset();
        self.llm.reset();
        self.tts.reset();
        self.timings.clear();
    }
}

/// The running simulators. Dropping this stops them (listener, calls and open sockets).
#[derive(Debug)]
pub struct Simulators {
    addr: SocketAddr,
    state: AppState,
    tasks: Arc<Tasks>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

fn router(state: AppState) -> Router {
    let twilio_routes = Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Calls.json",
            post(twilio::rest::create_call),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Calls/{call}",
            get(twilio::rest::get_call).post(twilio::rest::update_call),
        );
    let provider_routes = Router::new()
        .route("/v1/listen", get(stt::listen))
        .route("/v1/chat/completions", post(llm::chat_completions))
        .route(
            "/v1/text-to-speech/{voice_id}/multi-stream-input",
            get(tts::multi_stream_input),
        )
        .route(
            "/v1/text-to-speech/{voice_id}/stream-input",
            get(tts::stream_input),
        );
    twilio_routes
        .merge(provider_routes)
        .merge(control::router())
        .with_state(state)
}

impl Simulators {
    /// Binds `config.bind` and serves every simulator on it.
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        clock::epoch();
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.bind,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = Arc::new(Tasks::default());
        let timings = Arc::new(Timings::default());
        let state = AppState {
            twilio: Arc::new(twilio::TwilioState::new(
                config.twilio,
                timings.clone(),
                tasks.clone(),
            )),
            stt: Arc::new(stt::SttState::new(config.stt, timings.clone())),
            llm: Arc::new(llm::LlmState::new(config.llm)),
            tts: Arc::new(tts::TtsState::new(config.tts)),
            timings,
            shutdown: shutdown_rx.clone(),
        };
        let app = router(state.clone());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "Simulator server stopped.");
            }
        });
        Ok(Self {
            addr,
            state,
            tasks,
            shutdown,
            server,
        })
    }

    /// `http://127.0.0.1:{port}`: the base URL for every provider (and `ws://` for the sockets).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same host and port as `ws://…`.
    pub fn ws_base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn twilio(&self) -> TwilioHandle {
        TwilioHandle {
            state: self.state.twilio.clone(),
        }
    }

    pub fn stt(&self) -> SttHandle {
        SttHandle {
            state: self.state.stt.clone(),
        }
    }

    pub fn llm(&self) -> LlmHandle {
        LlmHandle {
            state: self.state.llm.clone(),
        }
    }

    pub fn tts(&self) -> TtsHandle {
        TtsHandle {
            state: self.state.tts.clone(),
        }
    }

    /// Per-call, per-line instants for the latency benchmark.
    pub fn timings(&self) -> TimingsReport {
        self.state.timings.report()
    }

    /// Forgets scenarios, records, queued replies and failure injections; ends calls in flight.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops serving and ends every call and socket (also done on drop).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.tasks.abort_all();
    }
}

impl Drop for Simulators {
    fn drop(&mut self) {
        self.shutdown();
        self.server.abort();
    }
}
