//! [`MqttUrl`]: `mqtt://host[:port]` (plain TCP, default port 1883) or `mqtts://host[:port]` (TLS,
//! default port 8883).

use std::fmt;

/// A parsed broker URL.
///
/// ```
/// use connector_mqtt_common::MqttUrl;
///
/// let u = MqttUrl::parse("mqtts://broker.example:8884").unwrap();
/// assert!(u.tls);
/// assert_eq!((u.host.as_str(), u.port), ("broker.example", 8884));
/// assert_eq!(MqttUrl::parse("mqtt://10.0.0.1").unwrap().port, 1883);
/// assert!(MqttUrl::parse("http://x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a broker URL was refused. Each message quotes the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Neither `mqtt://` nor `mqtts://`.
    #[error("expected mqtt://host[:port] or mqtts://host[:port], got {url:?}")]
    Scheme {
        /// The URL as given.
        url: String,
    },
    /// A path, query or user info after the host.
    #[error("{url:?}: only host and port belong in the URL (credentials go in username/password)")]
    NotHostAndPort {
        /// The URL as given.
        url: String,
    },
    /// `[` without `]`.
    #[error("{url:?}: unclosed '[' in IPv6 address")]
    UnclosedBracket {
        /// The URL as given.
        url: String,
    },
    /// Nothing between `://` and the port.
    #[error("{url:?}: missing host")]
    MissingHost {
        /// The URL as given.
        url: String,
    },
    /// Not a number from 1 to 65535.
    #[error("{url:?}: invalid port {port:?}")]
    Port {
        /// The URL as given.
        url: String,
        /// The port as given.
        port: String,
    },
}

impl MqttUrl {
    /// Parses a broker URL.
    ///
    /// # Errors
    /// A [`UrlError`] saying what is wrong (scheme, host, port, path).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let owned = || url.to_owned();
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(UrlError::Scheme { url: owned() });
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(UrlError::NotHostAndPort { url: owned() });
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            // [IPv6]:port
            let (h, after) = bracketed
                .split_once(']')
                .ok_or_else(|| UrlError::UnclosedBracket { url: owned() })?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost { url: owned() });
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(UrlError::Port { url: owned(), port: p.to_owned() }),
            },
        };
        Ok(Self { tls, host, port })
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why_not() {
        assert_eq!(
            MqttUrl::parse("mqtt://[::1]:1884").unwrap(),
            MqttUrl { tls: false, host: "::1".into(), port: 1884 }
        );
        assert_eq!(MqttUrl::parse("mqtts://h").unwrap().port, 8883);
        assert_eq!(MqttUrl::parse("mqtt://h:1/").unwrap().port, 1);
        for bad in
            ["mqtt://", "mqtt://h:0", "mqtt://h:x", "mqtt://u:p@h", "mqtt://h/path", "tcp://h"]
        {
            assert!(MqttUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MqttUrl::parse("mqtt://h:5").unwrap().to_string(), "mqtt://h:5");
        assert_eq!(
            MqttUrl::parse("mqtt://h:x").unwrap_err().to_string(),
            r#""mqtt://h:x": invalid port "x""#
        );
        assert_eq!(
            MqttUrl::parse("http://x").unwrap_err(),
            UrlError::Scheme { url: "http://x".into() }
        );
    }
}
