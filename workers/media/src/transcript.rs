//! The conversation as it was actually heard.
//!
//! Lines are recorded when they are finished: the caller's when their turn ends, the persona's
//! when its audio has played out — or, if the caller cut in, only the words that were played
//! before the cut. The LLM's next prompt is built from these lines, so the persona "remembers"
//! exactly what the caller heard, not what it meant to say.

use serde::{Deserialize, Serialize};

use crate::events::{ChatMessage, ChatRole, Millis};

/// Who spoke. Serialises to the roles stored in `call_transcripts.messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person called.
    User,
    /// The persona.
    Assistant,
}

/// One finished line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub role: Role,
    pub text: String,
    /// When the line was finished (ms since the epoch).
    pub at_ms: Millis,
    /// The persona was cut off; `text` is what was heard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// All lines of a call, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    lines: Vec<Line>,
}

impl Transcript {
    pub fn push(&mut self, line: Line) {
        self.lines.push(line);
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The chat messages for the next LLM request: the system prompt, then as many of the most
    /// recent lines as fit in `max_history_chars` (whole lines, oldest dropped first).
    pub fn chat_messages(&self, system_prompt: &str, max_history_chars: usize) -> Vec<ChatMessage> {
        let mut budget = max_history_chars;
        let mut kept = 0;
        for line in self.lines.iter().rev() {
            let cost = line.text.len();
            if cost > budget && kept > 0 {
                break;
            }
            budget = budget.saturating_sub(cost);
            kept += 1;
        }
        let mut messages = Vec::with_capacity(kept + 1);
        messages.push(ChatMessage {
            role: ChatRole::System,
            content: system_prompt.to_owned(),
        });
        for line in &self.lines[self.lines.len() - kept..] {
            let role = match line.role {
                Role::User => ChatRole::User,
                Role::Assistant => ChatRole::Assistant,
            };
            // Consecutive lines of one role (the caller spoke twice while the persona was cut
            // off) are merged: chat models expect alternating turns.
            match messages.last_mut() {
                Some(last) if last.role == role => {
                    last.content.push(' ');
                    last.content.push_str(&line.text);
                }
                _ => messages.push(ChatMessage {
                    role,
                    content: line.text.clone(),
                }),
            }
        }
        messages
    }
}

/// The words of `text` that fit in its first `chars` characters: whole words only, so a cut
/// never leaves half a word in the transcript.
pub fn heard_prefix(text: &str, chars: usize) -> String {
    let total = text.chars().count();
    if chars >= total {
        return text.trim().to_owned();
    }
    let cut = text
        .char_indices()
        .nth(chars)
        .map_or(text.len(), |(index, _)| index);
    let prefix = &text[..cut];
    // The character at the cut continues a word: drop that partial word.
    let continues_word = text[cut..]
        .chars()
        .next()
        .is_some_and(|c| !c.is_whitespace());
    let kept = if continues_word {
        prefix
            .rfind(char::is_whitespace)
            .map_or("", |space| &prefix[..space])
    } else {
        prefix
    };
    kept.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(role: Role, text: &str) -> Line {
        Line {
            role,
            text: text.to_owned(),
            at_ms: 0,
            interrupted: false,
        }
    }

    #[test]
    fn heard_prefix_keeps_whole_words() {
        let text = "I think we should start with a walk.";
        assert_eq!(heard_prefix(text, 0), "");
        assert_eq!(heard_prefix(text, 3), "I");
        assert_eq!(heard_prefix(text, 9), "I think", "cut inside 'we'");
        assert_eq!(heard_prefix(text, 10), "I think we");
        assert_eq!(heard_prefix(text, 1000), text);
        assert_eq!(heard_prefix("héllo wörld", 8), "héllo");
    }

    #[test]
    fn chat_messages_keep_recent_lines_within_budget_and_alternate_roles() {
        let mut transcript = Transcript::default();
        transcript.push(line(Role::Assistant, "Hello Ada!"));
        transcript.push(line(Role::User, "Hi."));
        transcript.push(line(Role::Assistant, "How are you feeling today?"));
        transcript.push(line(Role::User, "Tired."));
        transcript.push(line(Role::User, "Very tired."));
        let all = transcript.chat_messages("SYS", 10_000);
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].role, ChatRole::System);
        assert_eq!(all[4].content, "Tired. Very tired.");
        let recent = transcript.chat_messages("SYS", 20);
        assert_eq!(recent.len(), 2, "only the two newest lines fit: {recent:?}");
        assert_eq!(recent[1].content, "Tired. Very tired.");
        // The newest line is kept even when it alone is over budget.
        let tiny = transcript.chat_messages("SYS", 1);
        assert_eq!(tiny.len(), 2);
    }
}
