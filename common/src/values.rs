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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parser_takes_its_range_and_refuses_the_rest() {
        assert_eq!(fraction("0"), Ok(0.0));
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
    }
}
