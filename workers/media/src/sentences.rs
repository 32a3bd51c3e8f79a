//! Cuts a streaming LLM reply into sentences for text-to-speech.
//!
//! Speech starts when the first sentence is complete, not when the whole reply is: that is most
//! of the difference between a persona that answers and one that pauses. A sentence ends at
//! `.`, `!`, `?` or `…` followed by whitespace, or at a line break. Very short pieces ("Hi." or
//! "Oh!") are held and joined to what follows, because TTS prosody suffers on fragments, and
//! common abbreviations ("Dr.", "e.g.") and single initials do not end a sentence.

/// Pieces shorter than this (in characters) are joined to the next sentence.
const MIN_SENTENCE_CHARS: usize = 12;

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx", "no",
    "mt", "ft", "inc", "ltd", "co",
];

/// Accumulates text and yields complete sentences.
#[derive(Debug, Default, Clone)]
pub struct SentenceSplitter {
    buffer: String,
}

impl SentenceSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds streamed text; returns the sentences it completed (each trimmed, with one trailing
    /// space, as streaming TTS wants).
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut sentences = Vec::new();
        while let Some(end) = self.find_boundary() {
            let sentence: String = self.buffer.drain(..end).collect();
            let trimmed = sentence.trim();
            if !trimmed.is_empty() {
                sentences.push(format!("{trimmed} "));
            }
        }
        sentences
    }

    /// The rest of the text at the end of the reply, if any.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let trimmed = rest.trim();
        (!trimmed.is_empty()).then(|| format!("{trimmed} "))
    }

    /// Whether text is waiting for its sentence to end.
    pub fn is_empty(&self) -> bool {
        self.buffer.trim().is_empty()
    }

    /// Byte index just past the first usable boundary (including the whitespace after it).
    fn find_boundary(&self) -> Option<usize> {
        let text = self.buffer.as_str();
        let mut chars = text.char_indices().peekable();
        while let Some((index, ch)) = chars.next() {
            let is_break = ch == '\n';
            let is_terminal = matches!(ch, '.' | '!' | '?' | '…');
            if !is_break && !is_terminal {
                continue;
            }
            let next = chars.peek().map(|&(_, next)| next);
            let after = index + ch.len_utf8();
            if is_terminal {
                // Only a terminal followed by whitespace ends a sentence ("3.5", "...").
                match next {
                    Some(next) if next.is_whitespace() => {}
                    _ => continue,
                }
                if ch == '.' && is_abbreviation(&text[..index]) {
                    continue;
                }
            }
            let candidate = text[..after].trim();
            if candidate.chars().count() < MIN_SENTENCE_CHARS && !is_break {
                continue;
            }
            if candidate.is_empty() {
                continue;
            }
            // Include the whitespace after a terminal (a line break is its own whitespace).
            let whitespace = if is_break {
                0
            } else {
                next.map_or(0, char::len_utf8)
            };
            return Some(after + whitespace);
        }
        None
    }
}

/// Whether the word before a period is an abbreviation or an initial.
fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .next()
        .unwrap_or("");
    let lower = word.to_lowercase();
    (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&lower.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str]) -> Vec<String> {
        let mut splitter = SentenceSplitter::new();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(splitter.push(piece));
        }
        out.extend(splitter.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut splitter = SentenceSplitter::new();
        assert!(splitter.push("Good morning, Ada").is_empty());
        assert_eq!(
            splitter.push("! How did you sleep? I"),
            vec![
                "Good morning, Ada! ".to_owned(),
                "How did you sleep? ".to_owned()
            ]
        );
        assert_eq!(splitter.finish(), Some("I ".to_owned()));
    }

    #[test]
    fn token_by_token_streaming_gives_the_same_sentences() {
        let text = "That sounds great. Let's plan your week together. What comes first?";
        let tokens: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        assert_eq!(
            split(&refs),
            vec![
                "That sounds great. ",
                "Let's plan your week together. ",
                "What comes first? "
            ]
        );
    }

    #[test]
    fn short_fragments_join_the_next_sentence() {
        assert_eq!(
            split(&["Oh! Hi. That is lovely news."]),
            vec!["Oh! Hi. That is lovely news. "]
        );
    }

    #[test]
    fn abbreviations_numbers_and_initials_do_not_split() {
        assert_eq!(
            split(&["Dr. Smith said it costs 3.50 dollars. J. R. R. Tolkien agrees, e.g. me."]),
            vec![
                "Dr. Smith said it costs 3.50 dollars. ",
                "J. R. R. Tolkien agrees, e.g. me. "
            ]
        );
    }

    #[test]
    fn line_breaks_end_sentences_and_empty_text_yields_nothing() {
        assert_eq!(
            split(&["First line\nsecond line"]),
            vec!["First line ", "second line "]
        );
        assert!(split(&["   "]).is_empty());
        assert!(split(&[]).is_empty());
    }
}
