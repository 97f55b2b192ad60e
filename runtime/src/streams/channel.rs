//! Kubernetes' WebSocket channel protocols (`v5.channel.k8s.io` and its predecessors):
//! each message is one channel's bytes, the channel number first (binary protocols) or as
//! an ASCII digit before base64 text (`base64.channel.k8s.io`).
//!
//! Channels of exec and attach: 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON `Status` from
//! v4 on, plain text before), 4 resize (`{"Width":W,"Height":H}`). v5 adds the close
//! message `[255, channel]`, which half-closes a channel (stdin's end).
//! Port-forward over channels (the protocol kube-rs speaks) uses channel 2i for the data
//! of the i-th requested port and 2i+1 for its errors; each channel's first message
//! carries the port, little-endian.

use base64::Engine as _;
use bytes::Bytes;

/// Channel numbers of exec and attach.
pub mod ch {
    /// The process's stdin.
    pub const STDIN: u8 = 0;
    /// Its stdout.
    pub const STDOUT: u8 = 1;
    /// Its stderr.
    pub const STDERR: u8 = 2;
    /// How it ended, or why it could not run.
    pub const ERROR: u8 = 3;
    /// Terminal size changes.
    pub const RESIZE: u8 = 4;
    /// v5's close signal.
    pub const CLOSE: u8 = 255;
}

/// A channel protocol a client may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `v5.channel.k8s.io`: v4 plus the close signal.
    V5,
    /// `v4.channel.k8s.io`: binary channels, a JSON `Status` on the error channel.
    V4,
    /// `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io`: binary channels, the
    /// error as text.
    Binary,
    /// `base64.channel.k8s.io` and its `v4.`/`v5.` forms: text messages.
    Base64 {
        /// The error channel carries a `Status` (the v4 and v5 forms).
        status: bool,
    },
}

/// The subprotocols offered for exec and attach, in the order the server prefers them.
pub const PROTOCOLS: [&str; 8] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "v5.base64.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
];

impl Protocol {
    /// The protocol of a negotiated subprotocol name; no name (a client that asked for
    /// none) is the oldest binary protocol, as Kubernetes treats it.
    pub fn of(name: Option<&str>) -> Option<Protocol> {
        Some(match name.unwrap_or("channel.k8s.io") {
            "v5.channel.k8s.io" => Protocol::V5,
            "v4.channel.k8s.io" => Protocol::V4,
            "v3.channel.k8s.io" | "v2.channel.k8s.io" | "channel.k8s.io" => Protocol::Binary,
            "v5.base64.channel.k8s.io" | "v4.base64.channel.k8s.io" => {
                Protocol::Base64 { status: true }
            }
            "base64.channel.k8s.io" => Protocol::Base64 { status: false },
            _ => return None,
        })
    }

    /// Whether the error channel carries a JSON `Status` (else plain text).
    pub fn status_errors(self) -> bool {
        matches!(
            self,
            Protocol::V5 | Protocol::V4 | Protocol::Base64 { status: true }
        )
    }
}

/// One message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Binary.
    Binary(Bytes),
    /// Text.
    Text(String),
}

/// What a received message means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum In {
    /// Bytes for a channel.
    Data(u8, Bytes),
    /// v5: the client will send nothing more on this channel.
    Close(u8),
}

/// Frames `data` for `channel`.
pub fn encode(p: Protocol, channel: u8, data: &[u8]) -> Out {
    match p {
        Protocol::Base64 { .. } => {
            let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            s.push(char::from(b'0' + channel.min(9)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Out::Text(s)
        }
        _ => {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Out::Binary(Bytes::from(v))
        }
    }
}

/// Reads a binary message; `None` for an empty one (which carries nothing).
pub fn decode_binary(p: Protocol, msg: &[u8]) -> Option<In> {
    let (&channel, rest) = msg.split_first()?;
    if channel == ch::CLOSE && p == Protocol::V5 {
        return rest.first().map(|&c| In::Close(c));
    }
    Some(In::Data(channel, Bytes::copy_from_slice(rest)))
}

/// Reads a text message of the base64 protocols; `None` if it is not one.
pub fn decode_text(msg: &str) -> Option<In> {
    let (first, rest) = msg.split_at_checked(1)?;
    let channel = first.parse::<u8>().ok()?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_end())
        .ok()?;
    Some(In::Data(channel, Bytes::from(data)))
}

/// The error-channel message for an exit code: a `Status` (v4 and later), or nothing for
/// success and a line of text for a failure (older protocols).
pub fn exit_message(p: Protocol, code: i32) -> Option<Vec<u8>> {
    if p.status_errors() {
        let status = if code == 0 {
            serde_json::json!({"metadata": {}, "status": "Success"})
        } else {
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command [{code}], exit code {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        };
        serde_json::to_vec(&status).ok()
    } else {
        (code != 0).then(|| format!("command terminated with exit code {code}").into_bytes())
    }
}

/// The error-channel message for a failure that is not an exit code.
pub fn failure_message(p: Protocol, message: &str) -> Vec<u8> {
    if p.status_errors() {
        let status = serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500,
        });
        serde_json::to_vec(&status).unwrap_or_default()
    } else {
        message.as_bytes().to_vec()
    }
}

/// A resize message's size (width, height).
pub fn resize(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    serde_json::from_slice::<Size>(data)
        .ok()
        .map(|s| (s.width, s.height))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn protocols_are_named_as_kubernetes_names_them() {
        let table = [
            (Some("v5.channel.k8s.io"), Some(Protocol::V5)),
            (Some("v4.channel.k8s.io"), Some(Protocol::V4)),
            (Some("v3.channel.k8s.io"), Some(Protocol::Binary)),
            (Some("channel.k8s.io"), Some(Protocol::Binary)),
            (None, Some(Protocol::Binary)),
            (
                Some("base64.channel.k8s.io"),
                Some(Protocol::Base64 { status: false }),
            ),
            (
                Some("v4.base64.channel.k8s.io"),
                Some(Protocol::Base64 { status: true }),
            ),
            (Some("SPDY/3.1+portforward.k8s.io"), None),
        ];
        for (name, want) in table {
            assert_eq!(Protocol::of(name), want, "{name:?}");
        }
        for name in PROTOCOLS {
            assert!(Protocol::of(Some(name)).is_some(), "{name}");
        }
    }

    #[test]
    fn binary_and_text_framing() {
        assert_eq!(
            encode(Protocol::V5, 1, b"hi"),
            Out::Binary(Bytes::from_static(b"\x01hi"))
        );
        assert_eq!(
            encode(Protocol::Base64 { status: false }, 2, b"hi"),
            Out::Text("2aGk=".into())
        );
        assert_eq!(
            decode_binary(Protocol::V5, b"\x00abc"),
            Some(In::Data(0, Bytes::from_static(b"abc")))
        );
        // The close signal is v5's only; v4 reads it as data on channel 255.
        assert_eq!(decode_binary(Protocol::V5, b"\xff\x00"), Some(In::Close(0)));
        assert_eq!(
            decode_binary(Protocol::V4, b"\xff\x00"),
            Some(In::Data(255, Bytes::from_static(b"\x00")))
        );
        assert_eq!(decode_binary(Protocol::V5, b""), None);
        assert_eq!(
            decode_text("0aGk="),
            Some(In::Data(0, Bytes::from_static(b"hi")))
        );
        assert_eq!(decode_text("x"), None);
        assert_eq!(decode_text("0!!"), None);
    }

    #[test]
    fn exit_codes_become_what_kubectl_reads() {
        let ok: serde_json::Value =
            serde_json::from_slice(&exit_message(Protocol::V5, 0).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad: serde_json::Value =
            serde_json::from_slice(&exit_message(Protocol::V4, 3).unwrap()).unwrap();
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_message(Protocol::Binary, 0), None);
        assert_eq!(
            exit_message(Protocol::Binary, 2).unwrap(),
            b"command terminated with exit code 2"
        );
        let f: serde_json::Value =
            serde_json::from_slice(&failure_message(Protocol::V5, "no such file")).unwrap();
        assert_eq!(
            (f["status"].as_str(), f["message"].as_str()),
            (Some("Failure"), Some("no such file"))
        );
    }

    #[test]
    fn resize_messages() {
        assert_eq!(resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(resize(b"{}"), None);
        assert_eq!(resize(b"junk"), None);
    }
}
