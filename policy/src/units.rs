//! Small value types written as strings in a profile: durations, rates, sizes and CPU
//! quotas. Each parser refuses anything but the documented forms.

use std::fmt;
use std::time::Duration;

/// Why a unit value was refused; the message is the whole explanation, including
/// what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

/// `"30s"`, `"2m"`, `"1h"`, `"1d"`: a positive whole number and one unit.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let bad =
        || UnitError(format!("`{s}` is not a duration; write a whole number and s, m, h or d, e.g. \"30s\" or \"2m\""));
    let (num, unit) = split_number(s).ok_or_else(bad)?;
    let secs_per = match unit {
        "s" => 1u64,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if num == 0 {
        return Err(UnitError(format!("`{s}`: a duration must be more than zero")));
    }
    num.checked_mul(secs_per).map(Duration::from_secs).ok_or_else(|| UnitError(format!("`{s}` is too long")))
}

/// `"512M"`, `"2G"`, `"1T"`, `"64K"` (powers of 1024, as systemd reads them) or a
/// plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let bad = || {
        UnitError(format!(
            "`{s}` is not a size; write bytes or a number with K, M, G or T (powers of 1024), e.g. \"512M\""
        ))
    };
    let (num, unit) = split_number(s).ok_or_else(bad)?;
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    if num == 0 {
        return Err(UnitError(format!("`{s}`: a size must be more than zero")));
    }
    num.checked_mul(mult).ok_or_else(|| UnitError(format!("`{s}` is too large")))
}

/// `"50%"` (half a CPU), `"200%"` (two CPUs): percent of one CPU, 1 to 100000.
pub fn parse_cpu_quota(s: &str) -> Result<u32, UnitError> {
    let bad =
        || UnitError(format!("`{s}` is not a CPU quota; write a percentage of one CPU, e.g. \"50%\" or \"200%\""));
    let (num, unit) = split_number(s).ok_or_else(bad)?;
    if unit != "%" {
        return Err(bad());
    }
    match u32::try_from(num) {
        Ok(n @ 1..=100_000) => Ok(n),
        _ => Err(UnitError(format!("`{s}`: a CPU quota must be between 1% and 100000%"))),
    }
}

/// Leading ASCII digits (no sign, no spaces) and the rest.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 || end > 19 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// A rate limit: at most `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub per: RatePer,
}

/// The window of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RatePer {
    Sec,
    Min,
    Hour,
    Day,
}

impl RatePer {
    pub fn as_duration(self) -> Duration {
        Duration::from_secs(match self {
            RatePer::Sec => 1,
            RatePer::Min => 60,
            RatePer::Hour => 3600,
            RatePer::Day => 86_400,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            RatePer::Sec => "sec",
            RatePer::Min => "min",
            RatePer::Hour => "hour",
            RatePer::Day => "day",
        }
    }
}

impl Rate {
    /// `"60/min"`: a positive whole number, `/`, and `sec`, `min`, `hour` or `day`.
    pub fn parse(s: &str) -> Result<Rate, UnitError> {
        let bad = || UnitError(format!("`{s}` is not a rate; write N/sec, N/min, N/hour or N/day, e.g. \"60/min\""));
        let (num, unit) = s.split_once('/').ok_or_else(bad)?;
        let (count, rest) = split_number(num).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let per = match unit {
            "sec" => RatePer::Sec,
            "min" => RatePer::Min,
            "hour" => RatePer::Hour,
            "day" => RatePer::Day,
            _ => return Err(bad()),
        };
        match u32::try_from(count) {
            Ok(count @ 1..) => Ok(Rate { count, per }),
            _ => Err(UnitError(format!("`{s}`: the count must be between 1 and {}", u32::MAX))),
        }
    }

    /// The minimum spacing between requests if they were evenly spread.
    pub fn interval(&self) -> Duration {
        self.per.as_duration() / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())
    }
}

impl std::str::FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rate::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "s", "30", "30 s", "-1s", "1.5m", "2M", "0s", "+3s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_quotas() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2GB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_cpu_quota("50%"), Ok(50));
        assert_eq!(parse_cpu_quota("200%"), Ok(200));
        assert!(parse_cpu_quota("0%").is_err());
        assert!(parse_cpu_quota("50").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("60/min"), Ok(Rate { count: 60, per: RatePer::Min }));
        assert_eq!(Rate::parse("1/day").unwrap().to_string(), "1/day");
        assert_eq!(Rate::parse("10/sec").unwrap().interval(), Duration::from_millis(100));
        for bad in ["60", "60/minute", "/min", "0/min", "-1/min", "1.5/min", "60 /min", "60/Min"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
