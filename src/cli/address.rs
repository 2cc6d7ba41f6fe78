//! The `--metrics-address` grammar: Go's listen-address spelling.
//!
//! Go programs take `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every address;
//! the result is the socket address the HTTP server binds, so nothing after
//! the command line reads the text again.

use std::net::SocketAddr;

/// Parse a listen address; `:PORT` means every IPv4 address (`0.0.0.0`).
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    full.parse::<SocketAddr>()
        .map_err(|_| format!("invalid listen address {text:?}: use HOST:PORT, [V6]:PORT or :PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address(":9557").unwrap().to_string(), "0.0.0.0:9557");
        assert_eq!(parse_address("127.0.0.1:1").unwrap().port(), 1);
        assert_eq!(parse_address("[::1]:80").unwrap().port(), 80);
        assert!(parse_address("nope").is_err());
    }

    #[test]
    fn bad_address_names_the_grammar() {
        assert_eq!(
            parse_address("localhost:80"),
            Err(
                "invalid listen address \"localhost:80\": use HOST:PORT, [V6]:PORT or :PORT".into()
            )
        );
    }
}
