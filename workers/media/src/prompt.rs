//! The persona's instructions for one call, and the post-call memory summary.
//!
//! The system prompt is built once, when the call is placed, from (in this order) the persona's
//! core prompt, the user's customisation of the relationship, the scenario template and the
//! call's own instructions, then what the persona remembers of earlier calls, and last the rules
//! every phone conversation needs (short spoken sentences, no markup).

use crate::events::{ChatMessage, ChatRole, LlmRequest};
use crate::transcript::{Line, Role};

/// The pieces of a system prompt.
#[derive(Debug, Clone, Default)]
pub struct PromptParts<'a> {
    pub persona_name: &'a str,
    pub core_prompt: &'a str,
    pub relationship_type: Option<&'a str>,
    pub custom_prompt: Option<&'a str>,
    pub template_addition: Option<&'a str>,
    pub custom_instructions: Option<&'a str>,
    pub memory: Option<&'a str>,
    pub caller_name: Option<&'a str>,
}

const PHONE_RULES: &str = "You are speaking on a live phone call. Reply in one to three short, \
natural spoken sentences. Never use lists, markdown, emojis or stage directions. Never read out \
or ask for payment details, passwords or phone numbers.";

/// The full system prompt of a call.
pub fn compose_system_prompt(parts: &PromptParts<'_>) -> String {
    let mut prompt = String::with_capacity(1024);
    prompt.push_str(parts.core_prompt.trim());
    let mut section = |title: &str, body: Option<&str>| {
        if let Some(body) = body.map(str::trim).filter(|body| !body.is_empty()) {
            prompt.push_str("\n\n");
            prompt.push_str(title);
            prompt.push_str(body);
        }
    };
    if let Some(kind) = parts.relationship_type {
        section(
            "Your relationship with the caller: ",
            Some(&format!("you are their {kind}.")),
        );
    }
    section("What the caller asked of you: ", parts.custom_prompt);
    section("This call's scenario: ", parts.template_addition);
    section("Instructions for this call: ", parts.custom_instructions);
    section(
        "What you remember from earlier calls with them: ",
        parts.memory,
    );
    if let Some(name) = parts.caller_name.map(str::trim).filter(|n| !n.is_empty()) {
        prompt.push_str(&format!(
            "\n\nThe caller's name is {name}. You are {}.",
            parts.persona_name
        ));
    } else {
        prompt.push_str(&format!("\n\nYou are {}.", parts.persona_name));
    }
    prompt.push_str("\n\n");
    prompt.push_str(PHONE_RULES);
    prompt
}

/// Token cap of a memory summary: enough for a few sentences, bounded in cost.
pub const SUMMARY_MAX_TOKENS: u32 = 120;
/// Longest summary kept (characters), whatever the model returns.
pub const SUMMARY_MAX_CHARS: usize = 600;

/// The LLM request that turns a call into the persona's memory of it.
pub fn summary_request(previous_memory: Option<&str>, transcript: &[Line]) -> Option<LlmRequest> {
    if !transcript.iter().any(|line| line.role == Role::User) {
        return None; // nothing the caller said: nothing to remember
    }
    let mut conversation = String::new();
    for line in transcript {
        let who = match line.role {
            Role::User => "Caller",
            Role::Assistant => "You",
        };
        conversation.push_str(who);
        conversation.push_str(": ");
        conversation.push_str(&line.text);
        conversation.push('\n');
    }
    let mut instructions = String::from(
        "Write what you want to remember about the caller for your next phone call with them: \
         their situation, plans, preferences and how they felt, in at most three short sentences \
         written to yourself. Never include phone numbers, card or account numbers, addresses, \
         passwords or payment details.",
    );
    if let Some(previous) = previous_memory.filter(|m| !m.trim().is_empty()) {
        instructions.push_str(" Merge it with what you already remembered: ");
        instructions.push_str(previous.trim());
    }
    Some(LlmRequest {
        messages: vec![
            ChatMessage {
                role: ChatRole::System,
                content: instructions,
            },
            ChatMessage {
                role: ChatRole::User,
                content: format!("Summarise this call:\n{conversation}"),
            },
        ],
        max_tokens: SUMMARY_MAX_TOKENS,
        temperature: 0.2,
    })
}

/// Cleans a model-written summary before it is stored: anything that looks like a phone, card
/// or account number (four or more digits, possibly separated by spaces, dashes, dots or
/// parentheses) and any e-mail address is replaced, and the length is bounded.
pub fn sanitize_summary(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit()
            || (chars[i] == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Span of digits and separators.
            let start = i;
            let mut digits = 0;
            let mut end = i;
            let mut j = i;
            while j < chars.len() {
                let c = chars[j];
                if c.is_ascii_digit() {
                    digits += 1;
                    end = j + 1;
                } else if !matches!(c, ' ' | '-' | '.' | '(' | ')' | '+' | '/') {
                    break;
                }
                j += 1;
            }
            if digits >= 4 {
                out.push_str("[redacted]");
            } else {
                out.extend(&chars[start..end]);
            }
            i = end.max(start + 1);
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    let words: Vec<String> = out
        .split(' ')
        .map(|word| {
            if word.contains('@') && word.contains('.') {
                "[redacted]".to_owned()
            } else {
                word.to_owned()
            }
        })
        .collect();
    let cleaned = words.join(" ");
    let trimmed = cleaned.trim();
    if trimmed.chars().count() <= SUMMARY_MAX_CHARS {
        return trimmed.to_owned();
    }
    let cut: String = trimmed.chars().take(SUMMARY_MAX_CHARS).collect();
    match cut.rfind(['.', '!', '?']) {
        Some(end) if end > SUMMARY_MAX_CHARS / 2 => cut[..=end].to_owned(),
        _ => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_every_part_in_order_and_skips_empty_ones() {
        let prompt = compose_system_prompt(&PromptParts {
            persona_name: "Brad",
            core_prompt: "You are Brad, an upbeat fitness coach.",
            relationship_type: Some("coach"),
            custom_prompt: Some("Keep me accountable for my runs."),
            template_addition: Some("Morning motivation."),
            custom_instructions: Some("  "),
            memory: Some("Ada trains for a 10k in March."),
            caller_name: Some("Ada"),
        });
        let order = [
            "You are Brad, an upbeat",
            "you are their coach",
            "Keep me accountable",
            "Morning motivation",
            "Ada trains for a 10k",
            "The caller's name is Ada",
            "live phone call",
        ];
        let mut at = 0;
        for piece in order {
            let found = prompt[at..]
                .find(piece)
                .unwrap_or_else(|| panic!("{piece} missing or out of order in {prompt}"));
            at += found;
        }
        assert!(
            !prompt.contains("Instructions for this call"),
            "blank parts are left out"
        );
    }

    #[test]
    fn summaries_lose_numbers_and_addresses_and_stay_short() {
        let cleaned = sanitize_summary(
            "Ada's new number is +1 (415) 555-0123 and her card 4111 1111 1111 1111; mail ada@example.com. She runs 5 km, 3 times a week.",
        );
        assert!(!cleaned.contains("555"), "{cleaned}");
        assert!(!cleaned.contains("4111"), "{cleaned}");
        assert!(!cleaned.contains("ada@example.com"), "{cleaned}");
        assert!(
            cleaned.contains("5 km, 3 times"),
            "small numbers stay: {cleaned}"
        );
        let long = "Word ".repeat(400);
        assert!(sanitize_summary(&long).chars().count() <= SUMMARY_MAX_CHARS);
    }

    #[test]
    fn no_summary_without_anything_the_caller_said() {
        let greeting = Line {
            role: Role::Assistant,
            text: "Hello!".to_owned(),
            at_ms: 0,
            interrupted: false,
        };
        assert!(summary_request(None, std::slice::from_ref(&greeting)).is_none());
        let answer = Line {
            role: Role::User,
            text: "I start my new job Monday.".to_owned(),
            ..greeting.clone()
        };
        let request = summary_request(Some("Likes tea."), &[greeting, answer]).unwrap();
        assert_eq!(request.max_tokens, SUMMARY_MAX_TOKENS);
        assert!(request.messages[0].content.contains("Likes tea."));
        assert!(
            request.messages[1]
                .content
                .contains("Caller: I start my new job Monday.")
        );
    }
}
