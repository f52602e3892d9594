//! What a task wrote, made safe to show on a terminal (see docs/design.md,
//! Front ends). An agent's or a command's output can carry escape
//! sequences that drive the terminal showing it rather than show text:
//! set its title, write the clipboard (OSC 52), clear the screen, move the
//! cursor over what was shown, or turn on reporting that types into the
//! shell. Such output comes from whatever the agent read (a web page, a
//! file in the repository), so `grove logs`, `grove run` and `grove diff`
//! pass a terminal only text and the colours and styles of SGR sequences
//! (`ESC [ digits ; … m`), which build tools print and people expect to
//! keep, and erase-in-line (`ESC [ K`, for progress bars). Every other
//! escape sequence is dropped whole (a string one ends, at the latest, at
//! a newline or after 4 KiB, so that one never ended hides nothing after
//! it), and so is every
//! other control character but newline, tab, carriage return and
//! backspace, the C1 controls written as UTF-8 (U+0080–U+009F, which some
//! terminals obey) included. Into a pipe or a file the bytes go as written.
//!
//! A filter keeps its state between calls: a sequence may be split across
//! two reads of a log.

/// The longest SGR sequence passed on; a longer one is dropped (no colour
/// needs more, and nothing unbounded is held).
const SGR_AT_MOST: usize = 64;

/// A string sequence (a title, a clipboard write) that has not ended after
/// this many bytes, or at a newline, is taken for ended: one that never
/// ends must not hide the rest of a log or a diff.
const STRING_AT_MOST: usize = 4096;

#[derive(Default)]
pub struct TerminalFilter {
    state: State,
    /// The sequence being read, passed on whole once it proves an SGR.
    held: Vec<u8>,
    /// Bytes of the string being dropped (see [`STRING_AT_MOST`]).
    string_len: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum State {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (`ESC ( B`): up to a final byte.
    EscapeIntermediate,
    /// In `ESC [`: parameters, intermediates, then a final byte.
    Csi,
    /// A CSI too long or not an SGR: dropped up to its final byte.
    CsiDropped,
    /// OSC, DCS, APC, PM or SOS: a string dropped up to BEL or ST.
    Str,
    /// ESC inside such a string: `\` ends it (ST).
    StrEscape,
    /// 0xC2, the first byte of a C1 control written as UTF-8, or of text.
    C2,
}

impl TerminalFilter {
    /// Appends to `out` what of `input` a terminal may be shown.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        const ESC: u8 = 0x1b;
        match self.state {
            State::Text => match b {
                ESC => {
                    self.held.clear();
                    self.held.push(b);
                    self.state = State::Escape;
                }
                0xc2 => self.state = State::C2,
                b'\n' | b'\t' | b'\r' | 0x08 => out.push(b),
                0x00..=0x1f | 0x7f => {}
                _ => out.push(b),
            },
            State::C2 => {
                self.state = State::Text;
                if !(0x80..=0x9f).contains(&b) {
                    out.push(0xc2);
                    self.byte(b, out);
                }
            }
            State::Escape => match b {
                b'[' => {
                    self.held.push(b);
                    self.state = State::Csi;
                }
                b']' | b'P' | b'_' | b'^' | b'X' => {
                    self.string_len = 0;
                    self.state = State::Str;
                }
                0x20..=0x2f => self.state = State::EscapeIntermediate,
                // A control inside the sequence ends it, and is itself
                // judged as text; so is a byte no sequence has (the first
                // of a UTF-8 character).
                0x00..=0x1f | 0x80..=0xff => {
                    self.state = State::Text;
                    self.byte(b, out);
                }
                _ => self.state = State::Text,
            },
            State::EscapeIntermediate => match b {
                0x20..=0x2f => {}
                0x00..=0x1f | 0x80..=0xff => {
                    self.state = State::Text;
                    self.byte(b, out);
                }
                _ => self.state = State::Text,
            },
            State::Csi => match b {
                b'0'..=b'9' | b';' | b':' if self.held.len() < SGR_AT_MOST => self.held.push(b),
                // Colours and styles; and erasing the rest of the line,
                // which progress bars redrawn after `\r` need.
                b'm' | b'K' => {
                    self.held.push(b);
                    out.extend_from_slice(&self.held);
                    self.state = State::Text;
                }
                0x40..=0x7e => self.state = State::Text,
                0x00..=0x1f => {
                    self.state = State::Text;
                    self.byte(b, out);
                }
                _ => self.state = State::CsiDropped,
            },
            State::CsiDropped => match b {
                0x40..=0x7e => self.state = State::Text,
                0x00..=0x1f => {
                    self.state = State::Text;
                    self.byte(b, out);
                }
                _ => {}
            },
            State::Str => match b {
                // BEL ends it, as CAN and SUB cancel it.
                0x07 | 0x18 | 0x1a => self.state = State::Text,
                ESC => self.state = State::StrEscape,
                b'\n' => {
                    self.state = State::Text;
                    out.push(b);
                }
                _ => {
                    self.string_len += 1;
                    if self.string_len > STRING_AT_MOST {
                        self.state = State::Text;
                    }
                }
            },
            State::StrEscape => match b {
                b'\\' => self.state = State::Text,
                // A new sequence starts: the string ended without its ST.
                _ => {
                    self.held.clear();
                    self.held.push(ESC);
                    self.state = State::Escape;
                    self.byte(b, out);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TerminalFilter;

    fn shown(parts: &[&[u8]]) -> Vec<u8> {
        let mut f = TerminalFilter::default();
        let mut out = Vec::new();
        for p in parts {
            f.filter(p, &mut out);
        }
        out
    }

    #[test]
    fn text_and_colours_pass_other_sequences_do_not() {
        let red = b"\x1b[1;31merror\x1b[0m: it broke\r\n\tnext\x08!";
        assert_eq!(shown(&[red]), red.to_vec());
        let hostile: &[&[u8]] = &[
            b"a\x1b]0;pwned title\x07b",              // window title (OSC, BEL)
            b"c\x1b]52;c;aGVsbG8=\x1b\\d",            // clipboard write (OSC, ST)
            b"e\x1b[2Jf\x1b[H",                       // clear screen, cursor home
            b"g\x1b[?1000hh",                         // mouse reporting on
            b"i\x1bcj",                               // full reset
            b"k\x1b(Bl",                              // charset, with an intermediate
            b"m\x1bP+q544e\x1b\\n",                   // DCS request
            b"o\x07\x00\x7fp",                        // bell, NUL, DEL
            "q\u{9b}31mr\u{9d}0;t\u{9c}s".as_bytes(), // C1 controls as UTF-8
        ];
        // The C1 controls go; what followed them is plain text then.
        assert_eq!(shown(hostile), b"abcdefghijklmnopq31mr0;ts".to_vec());
    }

    #[test]
    fn sequences_split_across_reads_are_judged_whole() {
        assert_eq!(shown(&[b"x\x1b", b"[3", b"2mgreen"]), b"x\x1b[32mgreen");
        assert_eq!(shown(&[b"x\x1b]0;ti", b"tle\x1b", b"\\y"]), b"xy");
        // Text whose UTF-8 starts with 0xC2, as C1 controls do, passes.
        assert_eq!(shown(&["£5 é ©".as_bytes()]), "£5 é ©".as_bytes());
        assert_eq!(shown(&[b"a\xc2", b"\x9bb"]), b"ab");
    }

    #[test]
    fn a_string_never_ended_hides_nothing_past_its_line() {
        assert_eq!(shown(&[b"x\x1b]0;title\nline2\n"]), b"x\nline2\n");
        assert_eq!(shown(&[b"x\x1b]0;t\x18visible\n"]), b"xvisible\n");
        let long = [b"x\x1b]0;".as_slice(), &[b'a'; 5000], b"y"].concat();
        let out = shown(&[&long]);
        assert!(out.starts_with(b"x") && out.ends_with(b"y") && out.len() < 1000);
        // ESC just before a UTF-8 character keeps the character.
        assert_eq!(shown(&["a\x1bé b".as_bytes()]), "aé b".as_bytes());
        // A progress bar's erase-in-line passes.
        assert_eq!(shown(&[b"10%\r\x1b[K20%"]), b"10%\r\x1b[K20%");
    }

    #[test]
    fn an_overlong_or_unfinished_sequence_is_dropped_not_held() {
        let long = [b"\x1b[".as_slice(), &[b'1'; 200], b"mok"].concat();
        assert_eq!(shown(&[&long]), b"ok");
        // A newline inside a sequence ends it and shows.
        assert_eq!(shown(&[b"\x1b[31\nnext"]), b"\nnext");
    }
}
