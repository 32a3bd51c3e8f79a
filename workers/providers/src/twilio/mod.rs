//! Twilio: the Calls REST API, webhook signatures, TwiML and Media Streams messages.

pub mod media;
pub mod rest;
pub mod signature;
pub mod twiml;
