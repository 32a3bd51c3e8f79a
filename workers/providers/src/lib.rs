//! The providers' wire formats, pure: building requests and reading responses, no I/O.
//!
//! Each module speaks one protocol and translates it into the conversation engine's neutral
//! vocabulary (`callmeback_media::events`), so the per-call Durable Object is a thin loop over
//! sockets and another provider is one more module here:
//! - [`twilio`]: Calls REST API, `X-Twilio-Signature`, TwiML, Media Streams messages;
//! - [`deepgram`]: streaming speech-to-text;
//! - [`elevenlabs`]: streaming text-to-speech (multi-context);
//! - [`openai`]: OpenAI-compatible streaming chat completions (Cerebras by default).

pub mod deepgram;
pub mod elevenlabs;
pub mod openai;
pub mod twilio;
