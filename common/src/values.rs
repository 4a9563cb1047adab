//! Parsers of option values shared by the binaries' command lines (and so by `--config`
//! files, which become flags): each refuses a value the option cannot mean, so a bad one stops
//! the program before any worker starts, and clap's message names the flag.

/// A number in [0, 1].
pub fn fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not between 0 and 1"))
    }
}

/// A number strictly between 0 and 1.
pub fn open_fraction(s: &str) -> Result<f64, String> {
    let f = fraction(s)?;
    if f > 0.0 && f < 1.0 {
        Ok(f)
    } else {
        Err(format!("{f} must be strictly between 0 and 1"))
    }
}

/// A probability of dropping a unit: 0 (none) up to, not including, 1.
pub fn dropout(s: &str) -> Result<f32, String> {
    // Parsed as f32 directly, as clap did before: no double rounding through f64.
    let f: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..1.0).contains(&f) {
        Ok(f)
    } else if f == 1.0 {
        Err("1 would drop every unit: give a value below 1".into())
    } else {
        Err(format!("{f} is not between 0 and 1"))
    }
}

/// A learning rate: a finite number ≥ 0 (0 leaves the weights as they are).
pub fn learning_rate(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f.is_finite() && f >= 0.0 {
        Ok(f)
    } else {
        Err(format!("{f} is not a finite number ≥ 0"))
    }
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f32, String> {
    let f: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f.is_finite() && f > 0.0 {
        Ok(f)
    } else {
        Err(format!("{f} is not a finite number > 0"))
    }
}

/// A count of at least `min`.
pub fn at_least(
    min: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let n: usize = s
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number"))?;
        if n >= min {
            Ok(n)
        } else {
            Err(format!("{n} is less than {min}"))
        }
    }
}

/// A size in bytes: `8G`, `500M`, `1.5G`, `64K`, or a plain number of bytes (binary units;
/// `GB`, `GiB` and lower case read the same).
pub fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 8G, 500M)"))?;
    let scale: u64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M, G or T)")),
    };
    let bytes = n * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

/// A host other machines can dial: an IP address or a DNS name (letters, digits, `-`, `.`).
pub fn host(s: &str) -> Result<String, String> {
    let name_like = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if s.parse::<std::net::IpAddr>().is_ok() || name_like {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is neither an IP address nor a host name"))
    }
}

/// A `HOST:PORT` to dial: a host name, an IPv4 address or a bracketed IPv6 one (`[::1]:50052`),
/// and a port from 1 to 65535.
pub fn host_port(s: &str) -> Result<String, String> {
    host_and_port_from(s, 1)
}

/// A `HOST:PORT` to listen on (`0.0.0.0:50052`, `[::]:50052`, `localhost:9090`), where port 0
/// means any free port.
pub fn listen_addr(s: &str) -> Result<String, String> {
    host_and_port_from(s, 0)
}

fn host_and_port_from(s: &str, lowest_port: u16) -> Result<String, String> {
    let Some((h, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port"));
    };
    host_before_port(h).map_err(|e| format!("{s:?}: {e}"))?;
    match port.parse::<u16>() {
        Ok(p) if p >= lowest_port => Ok(s.to_string()),
        _ => Err(format!(
            "{s:?}: the port must be a number from {lowest_port} to 65535"
        )),
    }
}

/// A coordinator's gRPC URL: `http://` or `https://`, a host (an IPv6 one in brackets) and an
/// optional port, nothing after it but a `/`.
pub fn grpc_url(s: &str) -> Result<String, String> {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return Err(format!(
            "{s:?} is not a URL: write http://HOST:PORT (https:// with TLS)"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let after_host = authority
        .rfind(']')
        .map_or(authority, |end| &authority[end..]);
    match after_host.contains(':') {
        true => host_port(authority).map(|_| ()),
        false => host_before_port(authority).map_err(|e| format!("{s:?}: {e}")),
    }?;
    Ok(s.to_string())
}

/// The host part of `HOST:PORT`, where an IPv6 address needs brackets.
fn host_before_port(h: &str) -> Result<(), String> {
    match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => Ok(()),
        Some(_) => Err(format!("{h} is not an IPv6 address")),
        None if h.is_empty() => Err("no host before the port".into()),
        None if h.contains(':') => Err(format!("write an IPv6 host in brackets, [{h}]")),
        None => host(h).map(|_| ()).map_err(|e| format!("the host {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parser_takes_its_range_and_refuses_the_rest() {
        assert_eq!(fraction("0"), Ok(0.0));
        assert_eq!(byte_size("8G"), Ok(8 << 30));
        assert_eq!(byte_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(byte_size("500mb"), Ok(500 << 20));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("0").is_err() && byte_size("8X").is_err() && byte_size("G").is_err());
        assert_eq!(fraction("1"), Ok(1.0));
        assert!(fraction("1.5").is_err() && fraction("x").is_err());
        assert!(open_fraction("0").is_err() && open_fraction("1").is_err());
        assert_eq!(open_fraction("0.25"), Ok(0.25));
        assert_eq!(dropout("0"), Ok(0.0));
        assert_eq!(dropout("0.5"), Ok(0.5));
        assert!(dropout("1").is_err() && dropout("-0.1").is_err());
        assert_eq!(learning_rate("0.001"), Ok(0.001));
        assert_eq!(learning_rate("0"), Ok(0.0));
        for bad in ["-1", "nan", "inf", "x"] {
            assert!(learning_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(positive("2.5"), Ok(2.5));
        for bad in ["0", "-1", "nan", "inf"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(at_least(1)("3"), Ok(3));
        assert!(at_least(1)("0").is_err() && at_least(2)("1").is_err());
        assert!(at_least(1)("-1").is_err() && at_least(1)("1.5").is_err());
        for good in [
            "10.0.0.7",
            "::1",
            "worker-0.workers.default.svc",
            "localhost",
        ] {
            assert_eq!(host(good).as_deref(), Ok(good));
        }
        for bad in ["", "not an ip", "a..b", "-a", "10.0.0.7:50052", "http://x"] {
            assert!(host(bad).is_err(), "{bad}");
        }
        for good in [
            "http://coordinator:50051",
            "https://coord.example.com/",
            "http://[::1]:50051",
            "http://10.0.0.7:50051",
        ] {
            assert_eq!(grpc_url(good).as_deref(), Ok(good));
        }
        for bad in [
            "coordinator:50051",
            "http://",
            "http://:50051",
            "http://a b:50051",
            "http://coordinator:port",
            "http://coordinator:50051/path",
            "http://::1:50051",
        ] {
            assert!(grpc_url(bad).is_err(), "{bad}");
        }
        for good in [
            "0.0.0.0:50052",
            "[::]:0",
            "localhost:9090",
            "127.0.0.1:65535",
        ] {
            assert_eq!(listen_addr(good).as_deref(), Ok(good));
        }
        for bad in [
            "127.0.0.1:99999",
            "0.0.0.0",
            ":50052",
            "0.0.0.0:-1",
            ":::50052",
        ] {
            assert!(listen_addr(bad).is_err(), "{bad}");
        }
        assert!(host_port("10.0.0.7:0").is_err());
    }
}
