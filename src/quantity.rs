//! Kubernetes resource quantities (`100m`, `128Mi`, `1.5`, `2e3`), parsed the way
//! apimachinery's `resource.Quantity` does for the values a kubelet needs:
//! CPU as millicores, memory as bytes.

use thiserror::Error;

/// A quantity string that is not a valid Kubernetes quantity.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// Parses a quantity into a value scaled by `scale` (1 for bytes, 1000 for millicores),
/// rounding up like apimachinery's `MilliValue`/`Value`.
fn parse_scaled(q: &str, scale: f64) -> Result<i64, QuantityError> {
    let s = q.trim();
    let err = || QuantityError(q.to_string());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "+" || num == "-" {
        return Err(err());
    }
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    let v = (n * mult * scale).ceil();
    if !v.is_finite() || v > i64::MAX as f64 || v < i64::MIN as f64 {
        return Err(err());
    }
    Ok(v as i64)
}

/// A quantity as a whole number (bytes for memory), rounded up.
pub fn to_value(q: &str) -> Result<i64, QuantityError> {
    parse_scaled(q, 1.0)
}

/// A quantity in thousandths (millicores for CPU), rounded up.
pub fn to_milli(q: &str) -> Result<i64, QuantityError> {
    parse_scaled(q, 1000.0)
}

/// An integer as a BinarySI quantity's canonical text (`resource.Quantity.String()`):
/// the largest power-of-1024 suffix that divides it (`104857600` → `100Mi`), else digits.
pub fn format_binary(v: i64) -> String {
    if v == 0 {
        return "0".into();
    }
    for (unit, size) in [("Ei", 1i64 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if v % size == 0 {
            return format!("{}{unit}", v / size);
        }
    }
    v.to_string()
}

/// An integer as a DecimalSI quantity's canonical text (`5000` → `5k`).
pub fn format_decimal(v: i64) -> String {
    if v == 0 {
        return "0".into();
    }
    for (unit, size) in [("E", 1_000_000_000_000_000_000i64), ("P", 1_000_000_000_000_000), ("T", 1_000_000_000_000), ("G", 1_000_000_000), ("M", 1_000_000), ("k", 1_000)] {
        if v % size == 0 {
            return format!("{}{unit}", v / size);
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_as_apimachinery_prints_it() {
        assert_eq!(format_binary(104857600), "100Mi");
        assert_eq!(format_binary(1536), "1536");
        assert_eq!(format_binary(3 << 30), "3Gi");
        assert_eq!(format_binary(-2048), "-2Ki");
        assert_eq!(format_binary(0), "0");
        assert_eq!(format_decimal(5000), "5k");
        assert_eq!(format_decimal(4096), "4096");
        assert_eq!(format_decimal(-3_000_000), "-3M");
    }

    #[test]
    fn cpu_quantities_become_millicores() {
        assert_eq!(to_milli("100m").unwrap(), 100);
        assert_eq!(to_milli("1").unwrap(), 1000);
        assert_eq!(to_milli("1.5").unwrap(), 1500);
        assert_eq!(to_milli("0.1").unwrap(), 100);
    }

    #[test]
    fn memory_quantities_become_bytes() {
        assert_eq!(to_value("128Mi").unwrap(), 128 * 1024 * 1024);
        assert_eq!(to_value("1G").unwrap(), 1_000_000_000);
        assert_eq!(to_value("2e3").unwrap(), 2000);
        assert_eq!(to_value("64").unwrap(), 64);
    }

    #[test]
    fn garbage_is_rejected_with_the_upstream_message() {
        let e = to_value("12XB").unwrap_err();
        assert!(e.to_string().contains("quantities must match"));
        assert!(to_value("").is_err());
        assert!(to_value("Mi").is_err());
    }
}
